//! Bad bucket URLs, each failing in one sentence that names the URL and holds no secret: a
//! missing bucket, refused or missing credentials, a store that ignores conditional writes, no
//! objects under a prefix, an unsupported scheme, a model given as a URL (against moto).

use predicates::str::contains;

use crate::moto::*;
use crate::util::*;

#[test]
fn bad_bucket_urls_fail_with_one_clear_sentence_and_no_secret() {
    let Some(s3) = moto() else { return };
    let bucket = s3.bucket("bad-input");
    let dir = tempdir();
    let input = corpus(dir.path(), 20);
    bucket.upload_dir(&input, "in");
    let fails = |input: &str, out: &str, extra: &[&str], endpoint: &str, expected: &str| {
        let o = embed_s3(endpoint, input, out, extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
        assert!(!stderr.contains(SECRET), "the secret key was printed: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
    };
    let local_out = dir.path().join("out").to_string_lossy().to_string();
    fails(
        "s3://no-such-bucket-here/in",
        &local_out,
        &[],
        &s3.endpoint,
        "the bucket s3://no-such-bucket-here does not exist",
    );
    fails(
        &bucket.url("nothing-here"),
        &local_out,
        &[],
        &s3.endpoint,
        "no Parquet files (*.parquet) found in s3://bad-input/nothing-here",
    );
    fails(
        &bucket.url("in"),
        "s3://no-such-bucket-out/out",
        &[],
        &s3.endpoint,
        "the bucket s3://no-such-bucket-out does not exist",
    );
    fails(
        &bucket.url("in"),
        &local_out,
        &["--reuse", "s3://bad-input/never-written"],
        &s3.endpoint,
        "holds no worker folders",
    );
    fails("gopher://x/y", &local_out, &[], &s3.endpoint, "unsupported URL scheme gopher://");
    let o = s3_cmd(&s3.endpoint)
        .args(["embed", "--model", "s3://models/gte", "--output", &local_out])
        .arg(bucket.url("in"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("copy it to local disk first"), "{stderr}");
    s3_cmd(&s3.endpoint)
        .arg("status")
        .arg(bucket.url("in"))
        .assert()
        .failure()
        .stderr(contains("holds no worker folders"));

    // No credentials at all: the machine's metadata service (played by a server with none to
    // give) is asked and fails; said so, in one sentence.
    let o = embed_s3(&s3.endpoint, &bucket.url("in"), &local_out, &[])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_METADATA_ENDPOINT", empty_metadata_service())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("no credentials: none in the environment") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );

    // A store that ignores conditional writes is refused before anything is written there.
    let ignoring = FaultProxy::ignoring_conditions(&s3.endpoint);
    fails(
        &bucket.url("in"),
        "s3://bad-input/out-unsafe",
        &[],
        &ignoring.endpoint,
        "does not honour conditional writes",
    );
    assert!(bucket.keys("out-unsafe").is_empty(), "{:?}", bucket.keys("out-unsafe"));

    // Credentials the server does not accept: access denied, in one sentence, without the key.
    let Some(strict) = moto_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else { return };
    fails(&bucket.url("in"), &local_out, &[], &strict.endpoint, "access denied");
    let o = s3_cmd(&strict.endpoint).arg("verify").arg(bucket.url("out")).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("access denied") && !stderr.contains(SECRET), "{stderr}");
}

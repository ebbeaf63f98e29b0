//! The one line an error is printed as: anyhow's `{:#}` chain, less the causes that the message
//! above them already quotes.
//!
//! Many library errors both print their cause and return it as their `source` (parquet's
//! `External: {cause}`, object_store's messages), so the plain chain says the same thing twice:
//! "… External: No space left on device (os error 28): No space left on device (os error 28)".

/// `err` and its causes joined by ": ", each cause left out when the message just above it
/// already contains it.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut above: Option<String> = None;
    for cause in err.chain() {
        let text = cause.to_string();
        match &above {
            None => out.push_str(&text),
            Some(above) if above.contains(&text) => continue,
            Some(_) => {
                out.push_str(": ");
                out.push_str(&text);
            }
        }
        above = Some(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let err = Err::<(), _>(parquet::errors::ParquetError::External(Box::new(io)))
            .context("cannot write part-000001.parquet")
            .unwrap_err();
        let plain = format!("{err:#}");
        let os = std::io::Error::from_raw_os_error(28).to_string();
        assert_eq!(plain.matches(&os).count(), 2, "the plain chain repeats the cause: {plain}");
        let line = one_line(&err);
        assert_eq!(line, format!("cannot write part-000001.parquet: External: {os}"));
    }

    #[test]
    fn causes_that_say_something_new_are_all_kept() {
        let err = Err::<(), _>(std::io::Error::other("connection reset"))
            .context("cannot read s3://b/x.parquet")
            .context("giving up after 6 attempts")
            .unwrap_err();
        assert_eq!(one_line(&err), format!("{err:#}"));
        assert_eq!(
            one_line(&err),
            "giving up after 6 attempts: cannot read s3://b/x.parquet: connection reset"
        );
    }
}

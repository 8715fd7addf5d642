//! Text a client or a config supplied, quoted for messages people read:
//! in double quotes, with quotes, backslashes and control characters
//! escaped, so nothing in it can break the line it is shown in. Messages
//! never show Rust's `Debug` formatting, which is for programmers.

use std::fmt::{self, Write};

/// `"text"`, escaped as the module says.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::Quoted;

    #[test]
    fn quotes_and_control_characters_are_escaped() {
        assert_eq!(Quoted("plain").to_string(), "\"plain\"");
        assert_eq!(
            Quoted("a\"b\\c\nd\u{7f}é").to_string(),
            "\"a\\\"b\\\\c\\u{000a}d\\u{007f}é\""
        );
    }
}

//! A recipient's opt-in values (`BmiOptin`): Messaging Server's `mailAntiUBEService` values, or
//! Exim's `bmi_optin` ACL setting, given as one string with a separator
//! (`bmiOptinMset(optin, "spam:virus", ':')`).

/// Limits that keep a hostile or broken caller from growing an opt-in without bound.
pub const MAX_VALUES: usize = 256;
pub const MAX_TEXT: usize = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Optin {
    values: Vec<Vec<u8>>,
}

impl Optin {
    /// Adds the values of `text` split at `separator` (empty values dropped).
    pub fn mset(&mut self, text: &[u8], separator: u8) -> Result<(), String> {
        if text.len() > MAX_TEXT {
            return Err(format!(
                "bmiOptinMset: the values are {} bytes long, more than {MAX_TEXT}",
                text.len()
            ));
        }
        let new: Vec<&[u8]> = text
            .split(|&b| b == separator)
            .filter(|v| !v.is_empty())
            .collect();
        if self.values.len() + new.len() > MAX_VALUES {
            return Err(format!(
                "bmiOptinMset: more than {MAX_VALUES} opt-in values for one recipient"
            ));
        }
        self.values.extend(new.into_iter().map(<[u8]>::to_vec));
        Ok(())
    }

    pub fn values(&self) -> &[Vec<u8>] {
        &self.values
    }

    /// The values joined with ',' (the value of the `{bmi_optin}` macro).
    pub fn joined(&self) -> Vec<u8> {
        self.values.join(&b","[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_at_the_separator_and_accumulate() {
        let mut o = Optin::default();
        o.mset(b"spam:virus", b':').unwrap();
        o.mset(b"::adult:", b':').unwrap();
        assert_eq!(
            o.values(),
            [b"spam".to_vec(), b"virus".to_vec(), b"adult".to_vec()]
        );
        assert_eq!(o.joined(), b"spam,virus,adult");
    }

    #[test]
    fn too_many_or_too_long_values_are_refused() {
        let mut o = Optin::default();
        let many = vec![b'a'; MAX_VALUES + 1]
            .iter()
            .map(|_| "x")
            .collect::<Vec<_>>()
            .join(":");
        let e = o.mset(many.as_bytes(), b':').unwrap_err();
        assert!(e.contains("more than 256"), "{e}");
        let e = o.mset(&vec![b'a'; MAX_TEXT + 1], b':').unwrap_err();
        assert!(e.contains("bytes long"), "{e}");
        assert!(o.values().is_empty());
    }
}

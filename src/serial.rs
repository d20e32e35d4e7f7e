//! Certificate serial numbers, the keys of everything certmq knows.
//!
//! The ApsaraMQ certificate API names CA and device certificates by their X.509
//! serial number, written as the hex of the serial's DER content bytes (so a
//! serial whose first byte has the high bit set keeps its leading `00` sign
//! byte). Operators paste serials from many tools: `openssl x509 -serial`
//! prints upper-case hex without the sign byte, browsers print `AB:CD:..`.
//! [`Serial::parse`] accepts all of these and [`Serial`]'s `Display` writes
//! the one canonical form, so two spellings of one serial are one key.
//!
//! A serial is stored inline (no heap) because the device table holds one
//! per device and is sized in the millions.

use std::fmt;
use std::str::FromStr;

/// RFC 5280 allows 20 octets; certmq accepts 20 octets of magnitude plus
/// the sign byte, as some CAs in the wild do.
const MAX_LEN: usize = 21;

/// Why a serial number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("the serial number is empty")]
    Empty,
    #[error(
        "the serial number `{0}` is not hexadecimal (expected digits 0-9 and a-f, optionally separated by `:`)"
    )]
    NotHex(String),
    #[error("the serial number has {0} bytes; X.509 allows at most 20")]
    TooLong(usize),
}

/// An X.509 serial number in its canonical (minimal DER content) form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl Serial {
    /// Builds a serial from the DER content bytes of a certificate's
    /// serialNumber field (as x509-parser's `raw_serial` gives them).
    pub fn from_der_content(raw: &[u8]) -> Result<Self, SerialError> {
        Self::from_magnitude(raw)
    }

    /// Parses operator input: hex, any case, with or without `:` separators,
    /// with or without the leading `00` sign byte.
    pub fn parse(input: &str) -> Result<Self, SerialError> {
        let trimmed = input.trim();
        let digits: String = trimmed.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() {
            return Err(SerialError::Empty);
        }
        if !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SerialError::NotHex(truncate_for_message(trimmed)));
        }
        // An odd number of digits means a dropped leading zero nibble.
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let mut raw = Vec::with_capacity(padded.len() / 2);
        for pair in padded.as_bytes().chunks(2) {
            let text = std::str::from_utf8(pair)
                .map_err(|_| SerialError::NotHex(truncate_for_message(trimmed)))?;
            let byte = u8::from_str_radix(text, 16)
                .map_err(|_| SerialError::NotHex(truncate_for_message(trimmed)))?;
            raw.push(byte);
        }
        Self::from_magnitude(&raw)
    }

    /// Normalises big-endian bytes to the minimal DER INTEGER content form:
    /// redundant leading zero bytes go, a sign byte is added when the first
    /// remaining byte has its high bit set.
    fn from_magnitude(raw: &[u8]) -> Result<Self, SerialError> {
        if raw.is_empty() {
            return Err(SerialError::Empty);
        }
        let first_nonzero = raw.iter().position(|b| *b != 0);
        let magnitude: &[u8] = match first_nonzero {
            Some(i) => &raw[i..],
            None => &[],
        };
        if magnitude.len() > MAX_LEN - 1 {
            return Err(SerialError::TooLong(magnitude.len()));
        }
        let needs_sign = magnitude.first().is_none_or(|b| b & 0x80 != 0);
        let len = magnitude.len() + usize::from(needs_sign);
        let mut bytes = [0u8; MAX_LEN];
        let start = usize::from(needs_sign);
        bytes[start..len].copy_from_slice(magnitude);
        Ok(Serial {
            len: len as u8,
            bytes,
        })
    }

    /// The canonical DER content bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn truncate_for_message(input: &str) -> String {
    input.chars().take(64).collect()
}

impl fmt::Display for Serial {
    /// Upper-case hex of the DER content bytes, as `openssl x509 -serial`
    /// prints it (plus the sign byte where DER has one).
    ///
    /// Written through a table into one buffer: `{:02X}` per byte cost
    /// about 5,000 instructions for a 20-byte serial, twice per connect
    /// (the principal's `device_sn` and `ca_sn`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let bytes = self.as_bytes();
        let mut text = [0u8; 2 * MAX_LEN];
        for (pair, b) in text.chunks_exact_mut(2).zip(bytes) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0x0F)];
        }
        // Only ASCII hex digits were written.
        let text = std::str::from_utf8(&text[..2 * bytes.len()]).map_err(|_| fmt::Error)?;
        f.write_str(text)
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = SerialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Serial::parse(s)
    }
}

macro_rules! serial_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Serial);

        impl $name {
            /// Parses operator input (see [`Serial::parse`]).
            pub fn parse(input: &str) -> Result<Self, SerialError> {
                Serial::parse(input).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = SerialError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serial_newtype!(
    /// The serial number of a registered CA certificate (`CaSn` in the API).
    CaSn
);
serial_newtype!(
    /// The serial number of a device certificate (`DeviceSn` in the API);
    /// unique only together with the [`CaSn`] of its issuer.
    DeviceSn
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_keeps_sign_byte() {
        let s = Serial::from_der_content(&[0x00, 0xF1, 0x02]).unwrap();
        assert_eq!(s.to_string(), "00F102");
        assert_eq!(Serial::parse("f102").unwrap(), s);
        assert_eq!(Serial::parse("00:F1:02").unwrap(), s);
        assert_eq!(Serial::parse("00f102").unwrap(), s);
    }

    #[test]
    fn redundant_zero_bytes_are_dropped() {
        let s = Serial::parse("007269").unwrap();
        assert_eq!(s.to_string(), "7269");
        assert_eq!(Serial::parse("7269").unwrap(), s);
        assert_eq!(Serial::parse("269").unwrap().to_string(), "0269");
    }

    /// Every byte value, in the longest serial there is (a sign byte and
    /// 20 bytes), prints as `openssl x509 -serial` does: two upper-case
    /// hex digits each.
    #[test]
    fn every_byte_prints_as_two_upper_case_digits() {
        for chunk in (0..=255u8).collect::<Vec<_>>().chunks(19) {
            let mut magnitude = vec![0x80];
            magnitude.extend_from_slice(chunk);
            let s = Serial::from_der_content(&[&[0u8][..], &magnitude].concat()).unwrap();
            let expected: String = s.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
            assert_eq!(s.to_string(), expected);
            assert_eq!(s.to_string().len(), 2 * s.as_bytes().len());
            assert_eq!(Serial::parse(&s.to_string()).unwrap(), s);
        }
        assert_eq!(
            Serial::parse(&"ff".repeat(20)).unwrap().to_string().len(),
            42
        );
    }

    #[test]
    fn zero_serial_is_one_zero_byte() {
        assert_eq!(Serial::parse("0000").unwrap().to_string(), "00");
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert_eq!(Serial::parse("  "), Err(SerialError::Empty));
        assert!(matches!(Serial::parse("xyz"), Err(SerialError::NotHex(_))));
        let long = "7f".repeat(21);
        assert_eq!(Serial::parse(&long), Err(SerialError::TooLong(21)));
        // 20 bytes with a high bit still fit with the sign byte.
        assert!(Serial::parse(&"ff".repeat(20)).is_ok());
    }
}

//! A panic-free reader and a writer for Spore's binary encodings.
//!
//! Every parser in this crate goes through [`Reader`]: it never indexes out of bounds, every
//! length it reads is checked against a caller-supplied limit before anything is allocated, and
//! [`Reader::finish`] rejects trailing bytes so that an extended encoding never parses.

use crate::error::InvalidMessage;

/// Cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, offset: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.offset)
    }

    /// Takes exactly `n` bytes or fails without consuming anything.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], InvalidMessage> {
        let end = self
            .offset
            .checked_add(n)
            .ok_or(InvalidMessage::Truncated)?;
        let slice = self
            .buf
            .get(self.offset..end)
            .ok_or(InvalidMessage::Truncated)?;
        self.offset = end;
        Ok(slice)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], InvalidMessage> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, InvalidMessage> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, InvalidMessage> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, InvalidMessage> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, InvalidMessage> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64, InvalidMessage> {
        let v = f64::from_bits(self.u64()?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(InvalidMessage::BadValue("non-finite number"))
        }
    }

    pub fn bool(&mut self) -> Result<bool, InvalidMessage> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(InvalidMessage::BadValue("boolean")),
        }
    }

    /// A u8-length-prefixed byte string of at most `max` bytes.
    pub fn bytes_u8(&mut self, max: usize) -> Result<&'a [u8], InvalidMessage> {
        let len = usize::from(self.u8()?);
        if len > max {
            return Err(InvalidMessage::TooLong { limit: max });
        }
        self.take(len)
    }

    /// A u16-length-prefixed byte string of at most `max` bytes.
    pub fn bytes_u16(&mut self, max: usize) -> Result<&'a [u8], InvalidMessage> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(InvalidMessage::TooLong { limit: max });
        }
        self.take(len)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub fn bytes_u32(&mut self, max: usize) -> Result<&'a [u8], InvalidMessage> {
        let len =
            usize::try_from(self.u32()?).map_err(|_| InvalidMessage::TooLong { limit: max })?;
        if len > max {
            return Err(InvalidMessage::TooLong { limit: max });
        }
        self.take(len)
    }

    /// A u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string_u16(&mut self, max: usize) -> Result<String, InvalidMessage> {
        let raw = self.bytes_u16(max)?;
        String::from_utf8(raw.to_vec()).map_err(|_| InvalidMessage::BadValue("utf-8 string"))
    }

    /// Rejects trailing bytes: an encoding followed by anything is not that encoding.
    pub fn finish(self) -> Result<(), InvalidMessage> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(InvalidMessage::TrailingBytes(self.remaining()))
        }
    }
}

/// Append-only encoder; the mirror image of [`Reader`].
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Length-prefixed with a u8. Callers bound `b` by the same limit the reader enforces;
    /// a longer value is truncated at the type's maximum, which the reader then rejects.
    pub fn bytes_u8(&mut self, b: &[u8]) -> &mut Self {
        let len = u8::try_from(b.len()).unwrap_or(u8::MAX);
        self.u8(len).bytes(&b[..usize::from(len)])
    }

    pub fn bytes_u16(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(len).bytes(&b[..usize::from(len)])
    }

    pub fn bytes_u32(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len).bytes(&b[..len as usize])
    }

    pub fn string_u16(&mut self, s: &str) -> &mut Self {
        self.bytes_u16(s.as_bytes())
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.u16();
            let _ = r.bytes_u16(16);
            let _ = r.bytes_u32(16);
            let _ = r.string_u16(8);
            let _ = r.f64();
        }

        #[test]
        fn strings_round_trip(s in ".{0,40}", v in any::<u64>()) {
            let mut w = Writer::new();
            w.string_u16(&s).u64(v);
            let bytes = w.into_vec();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(r.string_u16(1024).unwrap(), s);
            prop_assert_eq!(r.u64().unwrap(), v);
            prop_assert!(r.finish().is_ok());
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let r = Reader::new(&[1, 2]);
        assert_eq!(r.finish(), Err(InvalidMessage::TrailingBytes(2)));
    }
}

//! NumPy `.npz` files as `np.savez` writes them: an uncompressed (stored) zip archive of `.npy`
//! arrays (format 1.0, little-endian, C order). This is the text-embedding cache format the
//! upstream trainer reads (`np.load(npz)["text_emb"]`, `["mask"]`).
//!
//! Only what the cache needs: stored entries (no compression), archives under 4 GiB (no zip64).

use std::path::Path;

use crate::error::{Error, Result};

/// One array: a NumPy type string (`<f4`, `|u1`, `<i8`), a shape and its C-order bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub descr: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NpyArray {
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        Self { descr: "<f4".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    pub fn u8(shape: Vec<usize>, values: Vec<u8>) -> Self {
        Self { descr: "|u1".into(), shape, data: values }
    }

    /// The elements as f32, for `<f4` arrays.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.descr == "<f4")
            .then(|| self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

/// The `.npy` bytes of `a` (format 1.0; the header is padded so the data starts 64-byte aligned).
fn npy_bytes(a: &NpyArray) -> Vec<u8> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!("({})", a.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}", a.descr);
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&a.data);
    out
}

/// The bytes of an `.npz` archive holding `arrays` as `<name>.npy`.
pub fn npz_bytes(arrays: &[(&str, &NpyArray)]) -> std::result::Result<Vec<u8>, String> {
    let (time, date) = (0u16, 0x21u16); // 1980-01-01 00:00, as zip's minimum date
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, a) in arrays {
        let numel: usize = a.shape.iter().product();
        let elem = match a.descr.as_str() {
            "<f4" | "<i4" => 4,
            "<i8" | "<f8" => 8,
            "|u1" | "|b1" => 1,
            "<f2" => 2,
            other => return Err(format!("array `{name}`: unsupported dtype {other}")),
        };
        if numel * elem != a.data.len() {
            return Err(format!("array `{name}`: {} bytes do not fill shape {:?}", a.data.len(), a.shape));
        }
        let file_name = format!("{name}.npy");
        let data = npy_bytes(a);
        let offset = out.len();
        if offset + data.len() > u32::MAX as usize - 1024 {
            return Err("the archive would exceed 4 GiB (zip64 is not written)".into());
        }
        let crc = crc32(&data);
        let size = data.len() as u32;
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        for v in [20u16, 0, 0, time, date] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, size, size] {
            local.extend_from_slice(&v.to_le_bytes());
        }
        local.extend_from_slice(&(file_name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(file_name.as_bytes());
        out.extend_from_slice(&local);
        out.extend_from_slice(&data);

        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        for v in [20u16, 20, 0, 0, time, date] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc, size, size] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        for v in [file_name.len() as u16, 0, 0, 0, 0] {
            central.extend_from_slice(&v.to_le_bytes());
        }
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&(offset as u32).to_le_bytes());
        central.extend_from_slice(file_name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    let cd_size = central.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    let n = arrays.len() as u16;
    for v in [0u16, 0, n, n] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

/// Writes `arrays` to `path` atomically (`osp_fs::write_bytes`).
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<()> {
    let bytes = npz_bytes(arrays).map_err(|why| Error::Npz { path: path.to_path_buf(), why })?;
    Ok(osp_fs::write_bytes(path, bytes)?)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a `.npy` file (format 1.x or 2.x, C order).
fn parse_npy(b: &[u8]) -> std::result::Result<NpyArray, String> {
    if b.get(..6) != Some(b"\x93NUMPY") {
        return Err("not an .npy array (bad magic)".into());
    }
    let (header_len, start) = match b.get(6) {
        Some(1) => (u16_at(b, 8).ok_or("truncated header")? as usize, 10),
        Some(2) | Some(3) => (u32_at(b, 8).ok_or("truncated header")? as usize, 12),
        _ => return Err("unsupported .npy version".into()),
    };
    let header = b.get(start..start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}':")).ok_or(format!("header lacks `{key}`"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("bad descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad shape")?;
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry `{s}`")))
        .collect::<std::result::Result<_, _>>()?;
    Ok(NpyArray { descr: descr.to_string(), shape, data: b[start + header_len..].to_vec() })
}

/// Reads every array of a stored (uncompressed) `.npz` archive, keyed by name without `.npy`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let bad = |why: String| Error::Npz { path: path.to_path_buf(), why };
    let b = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let eocd = (0..b.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&b, i) == Some(0x0605_4b50))
        .ok_or_else(|| bad("no end-of-central-directory record (not a zip archive)".into()))?;
    let entries = u16_at(&b, eocd + 10).ok_or_else(|| bad("truncated".into()))? as usize;
    let mut at = u32_at(&b, eocd + 16).ok_or_else(|| bad("truncated".into()))? as usize;
    let mut out = Vec::with_capacity(entries);
    for _ in 0..entries {
        let field = |o: usize| u32_at(&b, at + o).ok_or_else(|| bad("truncated central directory".into()));
        if field(0)? != 0x0201_4b50 {
            return Err(bad("corrupt central directory".into()));
        }
        let method = u16_at(&b, at + 10).ok_or_else(|| bad("truncated".into()))?;
        let crc = field(16)?;
        let size = field(20)? as usize;
        let name_len = u16_at(&b, at + 28).ok_or_else(|| bad("truncated".into()))? as usize;
        let extra_len = u16_at(&b, at + 30).ok_or_else(|| bad("truncated".into()))? as usize;
        let comment_len = u16_at(&b, at + 32).ok_or_else(|| bad("truncated".into()))? as usize;
        let local = field(42)? as usize;
        let name = b.get(at + 46..at + 46 + name_len).ok_or_else(|| bad("truncated".into()))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if method != 0 {
            return Err(bad(format!("entry `{name}` is compressed (only np.savez's stored entries are read)")));
        }
        let lname = u16_at(&b, local + 26).ok_or_else(|| bad("truncated".into()))? as usize;
        let lextra = u16_at(&b, local + 28).ok_or_else(|| bad("truncated".into()))? as usize;
        let start = local + 30 + lname + lextra;
        let data = b.get(start..start + size).ok_or_else(|| bad(format!("entry `{name}` is truncated")))?;
        if crc32(data) != crc {
            return Err(bad(format!("entry `{name}` fails its CRC check")));
        }
        let array = parse_npy(data).map_err(|why| bad(format!("entry `{name}`: {why}")))?;
        out.push((name.trim_end_matches(".npy").to_string(), array));
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npz");
        let emb = NpyArray::f32(vec![3, 2], &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        let mask = NpyArray::u8(vec![3], vec![1, 1, 0]);
        write_npz(&path, &[("text_emb", &emb), ("mask", &mask)]).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back, vec![("text_emb".to_string(), emb.clone()), ("mask".to_string(), mask)]);
        let raw = std::fs::read(&path).unwrap();
        let npy_header_end = raw.windows(1).position(|w| w[0] == b'\n').unwrap();
        assert_eq!((npy_header_end + 1 - 30 - "text_emb.npy".len()) % 64, 0, "data is 64-byte aligned");

        let mut flipped = raw.clone();
        flipped[npy_header_end + 3] ^= 0xFF;
        std::fs::write(&path, flipped).unwrap();
        let err = read_npz(&path).unwrap_err().to_string();
        assert!(err.contains("CRC"), "{err}");
        assert!(npz_bytes(&[("x", &NpyArray::f32(vec![2], &[1.0]))]).is_err());
    }
}

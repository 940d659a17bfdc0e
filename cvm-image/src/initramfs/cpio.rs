//! The newc cpio writer: an in-memory, sorted, reproducible archive.

use super::*;

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32, mode: u32 },
}

/// An in-memory archive: paths without a leading `/`, sorted, parents created on demand.
#[derive(Debug, Default)]
pub(super) struct Archive {
    pub(super) entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub(super) fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent {
            let s = p.to_string_lossy();
            if s.is_empty() {
                break;
            }
            self.entries.entry(s.into_owned()).or_insert(Entry::Dir);
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    pub(super) fn has(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// The newc ("070701") encoding: header, name + NUL padded to 4, data padded to 4;
    /// `TRAILER!!!` last. A `BTreeMap` puts every directory before its contents.
    pub(super) fn write_newc(&self, out: &mut impl Write) -> std::io::Result<u64> {
        let mut w = CountingWriter { inner: out, n: 0 };
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, mode } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink(t) => (0o120777, t.as_bytes(), (0, 0)),
                Entry::CharDev { major, minor, mode } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            newc_member(&mut w, ino as u32 + 1, mode, nlink, rdev, name, data)?;
        }
        newc_member(&mut w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(w.n)
    }
}

pub(super) struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn pad4(w: &mut impl Write, len: u64) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad as usize])
}

pub(super) fn newc_member<W: Write>(
    w: &mut CountingWriter<'_, W>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let size = u32::try_from(data.len())
        .map_err(|_| std::io::Error::other(format!("{name} is larger than 4 GiB")))?;
    let namesize = name.len() as u32 + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check.
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + u64::from(namesize))?;
    w.write_all(data)?;
    pad4(w, data.len() as u64)
}

//! The node's boot ID: recorded with every checkpoint record, so that a
//! reboot (device-side state gone, checkpoint still on disk) is noticed at
//! start-up and every prepared claim is prepared again.

use std::io;
use std::path::Path;

/// Where Linux publishes the boot ID (a UUID, new at every boot).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// **Test-only**: the path of a file read instead of [`BOOT_ID_PATH`], so
/// that end-to-end tests can fake a reboot. Production never sets it; the
/// host logs a warning when it is set.
pub const TEST_BOOT_ID_FILE_ENV: &str = "DRA_TEST_BOOT_ID_FILE";

/// Read a boot ID file: its first line, trimmed; empty is an error.
pub fn read_boot_id(path: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let id = text.lines().next().unwrap_or("").trim();
    if id.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("boot_id");
        std::fs::write(&f, "3f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f\n").unwrap();
        assert_eq!(read_boot_id(&f).unwrap(), "3f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_boot_id(&f).is_err());
        assert!(read_boot_id(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_real_boot_id_is_readable_here() {
        if Path::new(BOOT_ID_PATH).exists() {
            assert_eq!(read_boot_id(Path::new(BOOT_ID_PATH)).unwrap().len(), 36);
        }
    }
}

//! A ConfigMap volume as the kubelet maintains it, for the hot-swap tests.
//!
//! The kubelet's atomic writer never changes a projected file in place. Each
//! update writes every key into a new hidden directory `..<timestamp>`,
//! points a temporary symlink `..data_tmp` at it, renames that over `..data`
//! (one atomic step for all keys), and then removes the old directory. The
//! visible names are symlinks `key -> ..data/key`, created once.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct ConfigMapDir {
    dir: PathBuf,
    generation: u64,
}

impl ConfigMapDir {
    /// A volume at `dir` holding `files` (key, content).
    pub fn create(dir: &Path, files: &[(&str, &[u8])]) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cm = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        cm.update(files)?;
        for (key, _) in files {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key))?;
        }
        Ok(cm)
    }

    /// The path a pod (or the host config) uses for `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Replace the whole content, as a ConfigMap update does.
    pub fn update(&mut self, files: &[(&str, &[u8])]) -> Result<()> {
        self.generation += 1;
        let name = format!("..gen_{:06}", self.generation);
        let data = self.dir.join(&name);
        std::fs::create_dir(&data)?;
        for (key, bytes) in files {
            std::fs::write(data.join(key), bytes)?;
        }
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old))?;
        }
        Ok(())
    }
}

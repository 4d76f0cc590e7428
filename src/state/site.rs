//! A static route's settings as serving uses them: the root directory held open (files are
//! opened beneath it), index names, precompressed encodings, the Cache-Control value and
//! how much of the request path the route takes off.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::config::{Encoding, StaticFiles};

pub struct StaticSite {
    /// The root, opened once per snapshot: a reload opens it again (so a root replaced on
    /// disk, say by a deploy, is served from after a reload).
    pub root: File,
    pub root_path: PathBuf,
    pub index: Vec<String>,
    pub precompressed: Vec<Encoding>,
    pub cache_control: Option<HeaderValue>,
    /// The route's path: taken off the request's path to name a file beneath the root.
    pub prefix: String,
    /// Regular files opened beneath the root, by their path beneath it: `files::open` serves
    /// from here while the path still names the same file.
    pub open_files: Mutex<HashMap<PathBuf, OpenFile>>,
}

/// A file held open, and what `fstat` said of it when it was opened.
pub struct OpenFile {
    pub file: Arc<File>,
    pub meta: Metadata,
}

impl StaticSite {
    pub fn open(f: &StaticFiles, dir: &Path, prefix: &str) -> Result<StaticSite, String> {
        let root_path = dir.join(&f.root.value);
        let root = File::open(&root_path)
            .map_err(|e| format!("static.root: {}: {e}", root_path.display()))?;
        let cache_control = match &f.cache_control {
            Some(c) => Some(
                HeaderValue::from_str(&c.value)
                    .map_err(|_| format!("static.cache_control: {:?}", c.value))?,
            ),
            None => None,
        };
        Ok(StaticSite {
            root,
            root_path,
            index: f.index.clone(),
            precompressed: f.precompressed.iter().map(|p| p.value).collect(),
            cache_control,
            prefix: prefix.to_string(),
            open_files: Mutex::new(HashMap::new()),
        })
    }
}

//! Error pages read from their files when a snapshot is built (a reload reads them again),
//! and the maintenance switch, which lives outside any one snapshot: each new snapshot takes
//! the previous one's, so a reload keeps it on or off.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{ConfigError, ErrorPages, Loaded};

/// An error page larger than this is refused: it is held in memory by every snapshot.
pub const MAX_PAGE: u64 = 1024 * 1024;

/// One page: its body and its `Content-Type` (from the file's extension).
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub content_type: HeaderValue,
}

/// The pages in force somewhere (the top level, or one route: its own over the top level's).
#[derive(Debug, Default)]
pub struct Pages {
    by_status: Vec<(u16, Page)>,
    /// `maintenance.page`, else the 503 page.
    maintenance: Option<Page>,
}

impl Pages {
    /// The page for `status`, if any.
    pub fn get(&self, status: u16) -> Option<&Page> {
        self.by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, p)| p)
    }

    /// The maintenance page.
    pub fn maintenance(&self) -> Option<&Page> {
        self.maintenance.as_ref().or_else(|| self.get(503))
    }

    /// `over` on top of `base` (a route's pages over the top level's).
    fn over(base: &Pages, over: Vec<(u16, Page)>) -> Pages {
        let mut by_status = over;
        for (s, p) in &base.by_status {
            if !by_status.iter().any(|(o, _)| o == s) {
                by_status.push((*s, p.clone()));
            }
        }
        Pages {
            by_status,
            maintenance: base.maintenance.clone(),
        }
    }
}

/// Reads the file of `path` (relative to the config's directory): a missing, unreadable or
/// oversize one is an error at `at`.
fn read(loaded: &Loaded, path: &str, at: &serde_saphyr::Location) -> Result<Page, ConfigError> {
    let fail = |m: String| loaded.locate(ConfigError::at(&loaded.file, at, m));
    let full = loaded.dir.join(path);
    let body = read_bounded(&full).map_err(|e| fail(format!("{path}: {e}")))?;
    let mime = mime_guess::from_path(&full).first_or_octet_stream();
    let text = mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/json"
        || mime.essence_str() == "application/xml";
    let content_type = if text && mime.get_param("charset").is_none() {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    Ok(Page {
        body,
        content_type: HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    })
}

fn read_bounded(path: &Path) -> Result<Bytes, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the page: {e}"))?;
    let mut body = Vec::new();
    file.take(MAX_PAGE + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the page: {e}"))?;
    if body.len() as u64 > MAX_PAGE {
        return Err(format!("the page is larger than {MAX_PAGE} bytes (1MiB)"));
    }
    Ok(Bytes::from(body))
}

fn read_all(loaded: &Loaded, pages: &ErrorPages) -> Result<Vec<(u16, Page)>, ConfigError> {
    pages
        .0
        .iter()
        .map(|(status, file)| Ok((status.value, read(loaded, &file.value, &status.referenced)?)))
        .collect()
}

/// The top level's pages, and each route's (its own over the top level's), in route order.
pub fn build(loaded: &Loaded) -> Result<(Arc<Pages>, Vec<Arc<Pages>>), ConfigError> {
    let cfg = &loaded.config;
    let maintenance = match &cfg.maintenance.page {
        Some(p) => Some(read(loaded, &p.value, &p.referenced)?),
        None => None,
    };
    let top = Arc::new(Pages {
        by_status: read_all(loaded, &cfg.error_pages)?,
        maintenance,
    });
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for r in &cfg.routes {
        routes.push(if r.error_pages.is_empty() {
            top.clone()
        } else {
            Arc::new(Pages::over(&top, read_all(loaded, &r.error_pages)?))
        });
    }
    Ok((top, routes))
}

/// The maintenance switch: on while the admin API turned it on or the `maintenance.file`
/// exists. Kept across reloads (each snapshot takes the previous one's).
#[derive(Debug, Default)]
pub struct Switch {
    api: AtomicBool,
    file: AtomicBool,
}

impl Switch {
    #[inline]
    pub fn on(&self) -> bool {
        self.api.load(Ordering::Relaxed) || self.file.load(Ordering::Relaxed)
    }

    /// Turned on or off by the admin API (`POST /maintenance/on|off`).
    pub fn set_api(&self, on: bool) {
        self.api.store(on, Ordering::Relaxed);
    }

    pub fn by_api(&self) -> bool {
        self.api.load(Ordering::Relaxed)
    }

    /// Whether the file was there when last looked for.
    pub fn by_file(&self) -> bool {
        self.file.load(Ordering::Relaxed)
    }

    fn set_file(&self, on: bool) {
        let was = self.file.swap(on, Ordering::Relaxed);
        if was != on {
            tracing::info!(on, "maintenance file {}", if on { "found" } else { "gone" });
        }
    }
}

/// What a snapshot knows of maintenance: the switch (shared across reloads) and the config.
#[derive(Debug)]
pub struct MaintenanceState {
    pub switch: Arc<Switch>,
    /// `maintenance.file`, made absolute.
    pub file: Option<PathBuf>,
    /// Seconds for `Retry-After`.
    pub retry_after: u32,
}

impl MaintenanceState {
    pub fn build(loaded: &Loaded, previous: Option<Arc<Switch>>) -> MaintenanceState {
        let m = &loaded.config.maintenance;
        MaintenanceState {
            switch: previous.unwrap_or_default(),
            file: m.file.as_ref().map(|f| loaded.dir.join(&f.value)),
            retry_after: u32::try_from(m.retry_after.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

/// How often the maintenance file is looked for.
pub const POLL: Duration = Duration::from_secs(1);

/// Looks for the current snapshot's `maintenance.file` every `POLL` (one `stat` a second,
/// none per request) and sets the switch by its presence, until the task is aborted.
pub async fn watch_file(state: Arc<arc_swap::ArcSwap<super::Snapshot>>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = state.load();
        let m = &snap.maintenance;
        let there = match &m.file {
            Some(path) => std::fs::symlink_metadata(path).is_ok(),
            None => false,
        };
        m.switch.set_file(there);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routes_pages_are_over_the_top_levels() {
        let page = |s: &'static str| Page {
            body: Bytes::from_static(s.as_bytes()),
            content_type: HeaderValue::from_static("text/plain"),
        };
        let top = Pages {
            by_status: vec![(404, page("top 404")), (503, page("top 503"))],
            maintenance: None,
        };
        let route = Pages::over(&top, vec![(404, page("route 404"))]);
        assert_eq!(route.get(404).unwrap().body, "route 404");
        assert_eq!(route.get(503).unwrap().body, "top 503");
        assert!(route.get(502).is_none());
        assert_eq!(route.maintenance().unwrap().body, "top 503", "the 503 page");
    }

    #[test]
    fn the_switch_is_on_by_either() {
        let s = Switch::default();
        assert!(!s.on());
        s.set_api(true);
        assert!(s.on());
        s.set_file(true);
        s.set_api(false);
        assert!(s.on() && s.by_file() && !s.by_api());
        s.set_file(false);
        assert!(!s.on());
    }
}

//! Checks of a route's own answers and limits: `redirect`, `methods`, `max_body`,
//! `timeouts` (what `proxyd check` says about them, with file:line:column).

use serde_saphyr::Spanned;

use super::load::ConfigError;
use super::template::Var;
use super::{Redirect, Route};

/// The statuses a redirect may have.
const REDIRECTS: [u16; 5] = [301, 302, 303, 307, 308];

/// Checks `r`'s redirect, methods, body size and time-outs.
pub fn validate(file: &str, r: &Route) -> Result<(), ConfigError> {
    let at = |loc: &serde_saphyr::Location, msg: String| {
        ConfigError::at(file, loc, format!("routes: {msg}"))
    };
    if let Some(redirect) = &r.redirect {
        check_redirect(file, redirect)?;
        // A redirect answers every request: nothing else of the route would have an effect.
        let target = &redirect.to.referenced;
        if r.upstream.is_some() || r.files.is_some() {
            return Err(at(
                target,
                "redirect: a redirecting route has no upstream or static (it answers every request itself)".into(),
            ));
        }
        let idle = [
            ("methods", r.methods.is_some()),
            ("max_body", r.max_body.is_some()),
            ("timeouts", r.timeouts.is_some()),
            ("rate", r.rate.is_some()),
            ("compression", r.compression.is_some()),
            ("allow", !r.allow.is_empty()),
            ("deny", !r.deny.is_empty()),
            ("basic_auth", r.basic_auth.is_some()),
            ("intercept_errors", r.intercept_errors),
            ("maintenance", r.maintenance),
        ];
        if let Some((key, _)) = idle.iter().find(|(_, set)| *set) {
            return Err(at(
                target,
                format!("{key}: has no effect on a route that redirects"),
            ));
        }
    }
    if let Some(methods) = &r.methods {
        check_methods(file, r, methods)?;
    }
    // A static route without a fallback reads no body and asks no upstream.
    let files_only = r.files.as_ref().is_some_and(|f| f.fallback.is_none());
    if files_only {
        let idle = [
            ("max_body", r.max_body.is_some()),
            (
                "timeouts.response",
                r.timeouts.as_ref().is_some_and(|t| t.response.is_some()),
            ),
            (
                "timeouts.client_body",
                r.timeouts.as_ref().is_some_and(|t| t.client_body.is_some()),
            ),
        ];
        if let Some((key, _)) = idle.iter().find(|(_, set)| *set) {
            let msg = format!(
                "{key}: has no effect on a static route without a fallback (files take no body and no upstream answers)"
            );
            return Err(match r.place() {
                Some(l) => at(l, msg),
                None => ConfigError::new(file, None, msg),
            });
        }
    }
    Ok(())
}

fn check_redirect(file: &str, redirect: &Redirect) -> Result<(), ConfigError> {
    let at = |loc: &serde_saphyr::Location, msg: String| {
        ConfigError::at(file, loc, format!("routes: redirect.{msg}"))
    };
    if let Some(status) = &redirect.status {
        if !REDIRECTS.contains(&status.value) {
            return Err(at(
                &status.referenced,
                format!(
                    "status: {} is not a redirect; expected 301, 302, 303, 307 or 308",
                    status.value
                ),
            ));
        }
    }
    let to = &redirect.to.value;
    if to.parts().is_empty() {
        return Err(at(&redirect.to.referenced, "to: must not be empty".into()));
    }
    if let Some(q) = &redirect.query {
        if to.uses(Var::Query) || to.uses(Var::RequestUri) {
            return Err(at(
                &q.referenced,
                "query: `to` places the query itself ({query} or {request_uri}); leave query out"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn check_methods(file: &str, r: &Route, methods: &[Spanned<String>]) -> Result<(), ConfigError> {
    if methods.is_empty() {
        let msg = "routes: methods: [] would refuse every request; leave methods out to take any";
        return Err(match r.place() {
            Some(l) => ConfigError::at(file, l, msg),
            None => ConfigError::new(file, None, msg),
        });
    }
    for m in methods {
        let name = m.value.as_str();
        let fail =
            |msg: String| ConfigError::at(file, &m.referenced, format!("routes: methods: {msg}"));
        if http::Method::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
            return Err(fail(format!("{name:?} is not a method name")));
        }
        if name.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(fail(format!(
                "{name:?}: methods are case-sensitive; write {:?}",
                name.to_ascii_uppercase()
            )));
        }
    }
    Ok(())
}

//! Configuration, read from environment variables once per request.
//!
//! Environment variables are the one configuration channel every WASI host has
//! (`wasmtime serve --env`, `spin up -e`, `environment` in `spin.toml`). Spin
//! variables are deliberately not used: their import stops plain WASI hosts from
//! starting the component. The names of the Python reference are kept so that
//! existing set-ups carry over. Parsing is pure: it takes a lookup function.

use crate::error::CoordError;

/// Default DIAL Core base URL.
pub const DEFAULT_DIAL_ENDPOINT: &str = "http://localhost:8080";
/// Default LLM deployment for routing and synthesis.
pub const DEFAULT_DEPLOYMENT_NAME: &str = "gpt-4o";
/// Default UMS agent base URL.
pub const DEFAULT_UMS_AGENT_ENDPOINT: &str = "http://localhost:8042";
/// Default GPA deployment name.
pub const DEFAULT_GPA_DEPLOYMENT_NAME: &str = "general-purpose-agent";
/// Default request body limit: 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The typed configuration of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// DIAL Core base URL, without a trailing slash.
    pub dial_endpoint: String,
    /// LLM deployment used for routing and synthesis.
    pub deployment_name: String,
    /// UMS agent base URL, without a trailing slash.
    pub ums_endpoint: String,
    /// GPA deployment name.
    pub gpa_deployment: String,
    /// `api-version` query sent on calls into DIAL Core, if set.
    pub api_version: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dial_endpoint: DEFAULT_DIAL_ENDPOINT.to_owned(),
            deployment_name: DEFAULT_DEPLOYMENT_NAME.to_owned(),
            ums_endpoint: DEFAULT_UMS_AGENT_ENDPOINT.to_owned(),
            gpa_deployment: DEFAULT_GPA_DEPLOYMENT_NAME.to_owned(),
            api_version: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, CoordError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (a variable's value, if set).
    /// An empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, CoordError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let endpoint = |var: &'static str, default: &str| match get(var) {
            Some(v) => parse_endpoint(var, &v),
            None => Ok(default.to_owned()),
        };
        let deployment = |var: &'static str, default: &str| match get(var) {
            Some(v) => parse_deployment(var, &v),
            None => Ok(default.to_owned()),
        };
        let api_version = match get("DIAL_API_VERSION") {
            Some(v) => Some(parse_token("DIAL_API_VERSION", &v)?),
            None => None,
        };
        let max_request_bytes = match get("MAX_REQUEST_BYTES") {
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1024 => n,
                _ => {
                    return Err(CoordError::Config {
                        var: "MAX_REQUEST_BYTES",
                        reason: "must be a whole number of bytes, at least 1024".to_owned(),
                    })
                }
            },
            None => DEFAULT_MAX_REQUEST_BYTES,
        };
        Ok(Config {
            dial_endpoint: endpoint("DIAL_ENDPOINT", DEFAULT_DIAL_ENDPOINT)?,
            deployment_name: deployment("DEPLOYMENT_NAME", DEFAULT_DEPLOYMENT_NAME)?,
            ums_endpoint: endpoint("UMS_AGENT_ENDPOINT", DEFAULT_UMS_AGENT_ENDPOINT)?,
            gpa_deployment: deployment("GPA_DEPLOYMENT_NAME", DEFAULT_GPA_DEPLOYMENT_NAME)?,
            api_version,
            max_request_bytes,
        })
    }

    /// URL of a deployment's chat-completions endpoint in DIAL Core.
    pub fn deployment_url(&self, deployment: &str) -> String {
        let mut url = format!(
            "{}/openai/deployments/{deployment}/chat/completions",
            self.dial_endpoint
        );
        if let Some(v) = &self.api_version {
            url.push_str("?api-version=");
            url.push_str(v);
        }
        url
    }
}

/// An `http(s)://host[:port][/base]` URL without query, fragment, credentials or spaces.
fn parse_endpoint(var: &'static str, value: &str) -> Result<String, CoordError> {
    let bad = |reason: &str| CoordError::Config {
        var,
        reason: reason.to_owned(),
    };
    let v = value.trim();
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("must name a host"));
    }
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '@'))
    {
        return Err(bad(
            "must be a plain base URL (no spaces, query, fragment or credentials)",
        ));
    }
    Ok(v.trim_end_matches('/').to_owned())
}

/// A deployment name: it is put into a URL path, so only URL-safe characters.
fn parse_deployment(var: &'static str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if v.len() > 256
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || v == "."
        || v == ".."
    {
        return Err(CoordError::Config {
            var,
            reason: "must be a deployment name made of letters, digits, '-', '_' and '.'"
                .to_owned(),
        });
    }
    Ok(v.to_owned())
}

fn parse_token(var: &'static str, value: &str) -> Result<String, CoordError> {
    let v = value.trim();
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(CoordError::Config {
            var,
            reason: "must contain only letters, digits, '-', '_' and '.'".to_owned(),
        });
    }
    Ok(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, CoordError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_python_reference() {
        assert_eq!(cfg(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().dial_endpoint, "http://localhost:8080");
        assert_eq!(Config::default().ums_endpoint, "http://localhost:8042");
    }

    #[test]
    fn values_are_read_and_trailing_slash_dropped() {
        let c = cfg(&[
            ("DIAL_ENDPOINT", "https://core.example.com/"),
            ("DEPLOYMENT_NAME", "gpt-4.1"),
            ("UMS_AGENT_ENDPOINT", "http://127.0.0.1:9000"),
            ("GPA_DEPLOYMENT_NAME", "gpa"),
            ("DIAL_API_VERSION", "2025-01-01-preview"),
        ])
        .unwrap();
        assert_eq!(c.dial_endpoint, "https://core.example.com");
        assert_eq!(
            c.deployment_url("gpa"),
            "https://core.example.com/openai/deployments/gpa/chat/completions?api-version=2025-01-01-preview"
        );
        assert_eq!(c.ums_endpoint, "http://127.0.0.1:9000");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let e = cfg(&[("DIAL_ENDPOINT", "core:8080")]).unwrap_err();
        assert_eq!(e.status(), 500);
        assert!(e.message().contains("DIAL_ENDPOINT"), "{}", e.message());
        let e = cfg(&[("GPA_DEPLOYMENT_NAME", "a/b")]).unwrap_err();
        assert!(e.message().contains("GPA_DEPLOYMENT_NAME"));
        let e = cfg(&[("UMS_AGENT_ENDPOINT", "http://user:pw@host")]).unwrap_err();
        assert!(e.message().contains("UMS_AGENT_ENDPOINT"));
        assert!(!e.message().contains("pw"), "value must not be echoed");
        let e = cfg(&[("MAX_REQUEST_BYTES", "lots")]).unwrap_err();
        assert!(e.message().contains("MAX_REQUEST_BYTES"));
    }
}

//! The world's state, shared by its three servers and every `World` handle: the
//! recorded requests, the faults, the per-world counters and the two UMS instances'
//! conversation stores.

use crate::conversations::{A2aState, UmsState};
use crate::fault::Fault;
use crate::http::Service;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::watch;

/// One request received by the world.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recorded {
    /// `"core"`, `"ums"`, `"ums-backup"`, or `"app"` for a call forwarded to an application.
    pub service: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lowercased, in arrival order (values of a repeated name grouped).
    pub headers: Vec<(String, String)>,
    /// The (de-chunked) body, UTF-8 lossy.
    pub body: String,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, `Null` if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// State shared by the servers and the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) llm_deployment: String,
    pub(crate) requests: Mutex<Vec<Recorded>>,
    pub(crate) faults: Mutex<BTreeMap<String, Fault>>,
    next_response: AtomicU64,
    next_image: AtomicU64,
    next_rag_source: AtomicU64,
    ums: Mutex<UmsState>,
    ums_backup: Mutex<UmsState>,
    pub(crate) a2a: Mutex<A2aState>,
    pub(crate) shutdown: watch::Sender<bool>,
}

/// Locks `mutex`, also after a panic of another holder (the data stays usable).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(llm_deployment: String) -> Shared {
        Shared {
            llm_deployment,
            requests: Mutex::default(),
            faults: Mutex::default(),
            next_response: AtomicU64::new(0),
            next_image: AtomicU64::new(0),
            next_rag_source: AtomicU64::new(0),
            ums: Mutex::new(UmsState::new("ums-conv-")),
            ums_backup: Mutex::new(UmsState::new("ums-b-conv-")),
            a2a: Mutex::default(),
            shutdown: watch::Sender::new(false),
        }
    }

    pub(crate) fn record(&self, request: Recorded) {
        lock(&self.requests).push(request);
    }

    /// The fault of the first of `targets` that has one (default: no fault).
    pub(crate) fn fault_for(&self, targets: &[&str]) -> Fault {
        let faults = lock(&self.faults);
        targets
            .iter()
            .find_map(|t| faults.get(*t).cloned())
            .unwrap_or_default()
    }

    pub(crate) fn next_response_id(&self) -> String {
        let n = self.next_response.fetch_add(1, Ordering::Relaxed) + 1;
        format!("chatcmpl-world-{n}")
    }

    pub(crate) fn next_image(&self) -> u64 {
        self.next_image.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn next_rag_source(&self) -> u64 {
        self.next_rag_source.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The conversation store of the primary (`Service::Ums`) or backup UMS.
    pub(crate) fn lock_ums(&self, service: Service) -> MutexGuard<'_, UmsState> {
        match service {
            Service::UmsBackup => lock(&self.ums_backup),
            Service::Core | Service::Ums => lock(&self.ums),
        }
    }
}

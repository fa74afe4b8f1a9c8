//! Asynchronous operations (`/1.0/operations/ID`) and the event stream
//! (`/1.0/events`).

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::shim::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpStatus {
    Running,
    Success,
    Failure,
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    pub id: String,
    /// What it does: "start", "shutdown", "reboot", "destroy", ...
    pub kind: String,
    /// The VM it acts on.
    pub target: String,
    pub status: OpStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub result: Value,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// Finished operations are kept this long for late `wait`ers.
const KEEP_FINISHED_MS: u64 = 10 * 60 * 1000;

#[derive(Default)]
pub struct Operations {
    map: Mutex<HashMap<String, Operation>>,
    changed: Condvar,
    next: Mutex<u64>,
}

impl Operations {
    pub fn create(&self, kind: &str, target: &str) -> Operation {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            format!("{:x}-{}", now_ms(), *n)
        };
        let now = now_ms();
        let op = Operation {
            id: id.clone(),
            kind: kind.into(),
            target: target.into(),
            status: OpStatus::Running,
            error: None,
            result: Value::Null,
            created_ms: now,
            updated_ms: now,
        };
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, o| o.status == OpStatus::Running || now.saturating_sub(o.updated_ms) < KEEP_FINISHED_MS);
        map.insert(id, op.clone());
        op
    }

    pub fn finish(&self, id: &str, outcome: Result<Value, String>) -> Option<Operation> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let op = map.get_mut(id)?;
        op.updated_ms = now_ms();
        match outcome {
            Ok(v) => {
                op.status = OpStatus::Success;
                op.result = v;
            }
            Err(e) => {
                op.status = OpStatus::Failure;
                op.error = Some(e);
            }
        }
        let done = op.clone();
        self.changed.notify_all();
        Some(done)
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    pub fn list(&self) -> Vec<Operation> {
        let mut v: Vec<Operation> = self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by_key(|o| o.created_ms);
        v
    }

    /// Wait until the operation is no longer running or `timeout` passes.
    pub fn wait(&self, id: &str, timeout: Duration) -> Option<Operation> {
        let deadline = Instant::now() + timeout;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let op = map.get(id)?.clone();
            let now = Instant::now();
            if op.status != OpStatus::Running || now >= deadline {
                return Some(op);
            }
            map = self.changed.wait_timeout(map, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Fan-out of JSON event lines to `/1.0/events` subscribers.
#[derive(Default)]
pub struct Events {
    subs: Mutex<Vec<Sender<String>>>,
}

impl Events {
    pub fn subscribe(&self) -> Receiver<String> {
        let (tx, rx) = channel();
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        rx
    }

    pub fn emit(&self, kind: &str, mut body: Value) {
        if let Value::Object(m) = &mut body {
            m.insert("type".into(), json!(kind));
            m.insert("time_ms".into(), json!(now_ms()));
        }
        let line = format!("{body}\n");
        self.subs.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| s.send(line.clone()).is_ok());
    }
}

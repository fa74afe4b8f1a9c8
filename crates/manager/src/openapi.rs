//! The OpenAPI 3 description the daemon serves at `/1.0/openapi.json`.

use serde_json::{Map, Value, json};

/// (method, path, summary, request body schema name, success status)
const ROUTES: &[(&str, &str, &str, Option<&str>, u16)] = &[
    ("get", "/1.0", "Server information", None, 200),
    ("get", "/1.0/openapi.json", "This document", None, 200),
    (
        "get",
        "/1.0/events",
        "Event stream: chunked JSON lines (vm, operation, definition, volume, heartbeat)",
        None,
        200,
    ),
    ("get", "/1.0/operations", "List recent operations", None, 200),
    ("get", "/1.0/operations/{id}", "Get an operation; `?wait=SECONDS` blocks until it finishes", None, 200),
    ("get", "/1.0/vms", "List VMs (`?active=1` for running ones only, `?details=1` adds CPU time and RSS)", None, 200),
    ("post", "/1.0/vms", "Define a VM from TOML (updates one of the same name and UUID)", Some("Definition"), 201),
    ("get", "/1.0/vms/{vm}", "VM state and definition (`vm` is a name or UUID)", None, 200),
    ("put", "/1.0/vms/{vm}", "Replace the definition (edit); invalid definitions are refused", Some("Definition"), 200),
    ("delete", "/1.0/vms/{vm}", "Undefine a stopped VM (`?remove_storage=1` deletes its pool volumes)", None, 200),
    (
        "put",
        "/1.0/vms/{vm}/state",
        "start|shutdown|reboot|destroy (202 + operation) or suspend|resume",
        Some("StateChange"),
        202,
    ),
    ("put", "/1.0/vms/{vm}/autostart", "Enable or disable autostart", Some("Enabled"), 200),
    ("get", "/1.0/vms/{vm}/stats", "vCPU time, memory and device counters", None, 200),
    ("post", "/1.0/vms/{vm}/vcpupin", "Pin a vCPU (live and persistent)", Some("VcpuPin"), 200),
    ("post", "/1.0/vms/{vm}/memory", "Set the current memory through the balloon", Some("Memory"), 200),
    ("get", "/1.0/vms/{vm}/log", "console.log (`?which=console`) or the VMM log (`?which=vmm`)", None, 200),
    (
        "get",
        "/1.0/vms/{vm}/console",
        "Upgrade to a raw bidirectional serial console (`?from=OFFSET` replays the log)",
        None,
        101,
    ),
    ("get", "/1.0/pools", "List storage pools", None, 200),
    ("post", "/1.0/pools", "Define a pool", Some("Pool"), 201),
    ("get", "/1.0/pools/{pool}", "Pool details", None, 200),
    ("delete", "/1.0/pools/{pool}", "Undefine an inactive pool", None, 200),
    ("put", "/1.0/pools/{pool}/state", "start|destroy|refresh", Some("StateChange"), 200),
    ("put", "/1.0/pools/{pool}/autostart", "Enable or disable pool autostart", Some("Enabled"), 200),
    ("get", "/1.0/pools/{pool}/volumes", "List volumes", None, 200),
    ("post", "/1.0/pools/{pool}/volumes", "Create a volume (raw|qcow2, optional backing)", Some("VolumeCreate"), 201),
    ("get", "/1.0/pools/{pool}/volumes/{vol}", "Volume info", None, 200),
    ("delete", "/1.0/pools/{pool}/volumes/{vol}", "Delete a volume", None, 200),
    ("post", "/1.0/pools/{pool}/volumes/{vol}/resize", "Grow a volume", Some("Resize"), 200),
    ("post", "/1.0/pools/{pool}/volumes/{vol}/clone", "Clone a volume", Some("Clone"), 201),
];

fn schemas() -> Value {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    json!({
        "Definition": obj(json!({"toml": {"type": "string", "description": "VM definition in TOML"}}), &["toml"]),
        "StateChange": obj(json!({"action": {"type": "string"}, "timeout": {"type": "integer", "description": "seconds (shutdown/reboot)"}}), &["action"]),
        "Enabled": obj(json!({"enabled": {"type": "boolean"}}), &["enabled"]),
        "VcpuPin": obj(json!({"vcpu": {"type": "integer"}, "cpus": {"type": "array", "items": {"type": "integer"}}}), &["vcpu", "cpus"]),
        "Memory": obj(json!({"mib": {"type": "integer"}}), &["mib"]),
        "Pool": obj(json!({"name": {"type": "string"}, "type": {"enum": ["dir", "logical"]}, "target": {"type": "string"},
            "source_name": {"type": "string"}, "source_devices": {"type": "array", "items": {"type": "string"}}, "autostart": {"type": "boolean"}}), &["name", "type", "target"]),
        "VolumeCreate": obj(json!({"name": {"type": "string"}, "capacity": {"type": "integer"}, "format": {"enum": ["raw", "qcow2"]},
            "backing": {"type": "string"}, "backing_format": {"enum": ["raw", "qcow2"]}}), &["name", "capacity"]),
        "Resize": obj(json!({"capacity": {"type": "integer"}}), &["capacity"]),
        "Clone": obj(json!({"name": {"type": "string"}}), &["name"]),
        "Error": obj(json!({"error": {"type": "string"}}), &["error"]),
        "Operation": obj(json!({"id": {"type": "string"}, "kind": {"type": "string"}, "target": {"type": "string"},
            "status": {"enum": ["running", "success", "failure"]}, "error": {"type": "string"}, "result": {}}), &["id", "status"]),
    })
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, body, status) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": summary,
            "responses": {
                status.to_string(): {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if let Some(b) = body {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}});
        }
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Tern manager API", "version": "1.0",
                 "description": "REST API of `tern daemon` on its Unix socket (default /run/tern/tern.sock)."},
        "paths": paths,
        "components": {"schemas": schemas()},
    })
}

//! `deploy/grafana/printgate.json`: valid against Grafana's dashboard JSON model (JSON Schema
//! from grafana-foundation-sdk, see tests/fixtures/grafana/README.md; checked with Python's
//! `jsonschema`, pinned in `.ci/run`), and every metric it queries is in a real `/metrics`.

mod common;
use common::*;

use printgate::config::Model;
use std::collections::BTreeSet;
use std::process::Command;

const DASHBOARD: &str = "deploy/grafana/printgate.json";
const SCHEMA: &str = "tests/fixtures/grafana/dashboard.jsonschema.json";

/// Problems `jsonschema` finds in `doc` (empty: valid).
fn schema_problems(doc: &serde_json::Value) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dashboard.json");
    std::fs::write(&path, doc.to_string()).expect("write");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        doc = json.load(open(sys.argv[2]))\n\
        v = jsonschema.Draft7Validator(schema)\n\
        for e in v.iter_errors(doc):\n\
        \x20   print('/'.join(str(p) for p in e.absolute_path), e.message)\n";
    let out = Command::new("python3")
        .args(["-c", script, SCHEMA])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "jsonschema did not run (install it: `bash .ci/run`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard")).expect("JSON")
}

#[test]
fn dashboard_is_valid_in_grafanas_json_model() {
    let d = dashboard();
    let problems = schema_problems(&d);
    assert!(problems.is_empty(), "{problems}");
    // The check can fail: a panel wider than the grid and an unknown field are caught.
    let mut bad = d.clone();
    bad["panels"][1]["gridPos"]["w"] = serde_json::json!(30);
    bad["colour"] = serde_json::json!("red");
    let problems = schema_problems(&bad);
    assert!(
        problems.contains("gridPos") && problems.contains("colour"),
        "{problems}"
    );
}

/// Metric names a PromQL expression names (`printgate_…`, `process_…`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if start_ok && (expr[i..].starts_with("printgate_") || expr[i..].starts_with("process_")) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if (k == "expr" || k == "query") && x.is_string() {
                    out.push(x.as_str().unwrap_or_default().to_string());
                }
                exprs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served() {
    let sims = vec![start_sim(Model::P1S, 1.0).await];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(dir.path(), &sims);
    cfg.metrics.enabled = true;
    cfg.safety = safety_config(1);
    let mut broker =
        printgate::broker::config::BrokerConfig::demo("127.0.0.1:0".parse().expect("address"))
            .expect("broker");
    broker.mode = printgate::broker::config::BrokerMode::Embedded;
    cfg.broker = broker;
    let t = TestGateway::start_with(sims, dir, cfg).await;
    t.wait_online().await;
    // A backup, so that its age is shown.
    let archive = t.dir.path().join("backup.zip");
    printgate::backup::backup(t.dir.path(), &archive).expect("backup");
    let token = demo_api_token(&t.gw().store);
    let client = reqwest::Client::new();
    let mut text = String::new();
    for _ in 0..2 {
        text = client
            .get(t.url("/metrics"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
    }
    let served: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut all = Vec::new();
    exprs(&dashboard(), &mut all);
    let queried: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    assert!(queried.len() >= 20, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\n{text}"
    );
    t.shutdown().await;
}

//! The OpenAPI reference of the JSON API (`GET /api/v1/openapi.json`) against the real gateway:
//! it is valid JSON in OpenAPI 3.1 form, it documents every `/api/v1/` route of the router with
//! the same methods (the routes are found by scanning `src/web/`, so a new API route without an
//! annotation fails here), its references resolve to the schemas it names, and it is served
//! only to signed-in callers like the rest of the API.

use printgate::config::Config;
use printgate::web::auth;
use std::collections::BTreeSet;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Every `(method, path)` of a `.route("/api/v1/…", …)` call in `src/web/`.
fn api_routes() -> BTreeSet<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![root.join("src/web")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
    }
    let mut routes = BTreeSet::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let Some(path) = rest
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
            else {
                continue;
            };
            if !path.starts_with("/api/v1/") {
                continue;
            }
            // The whole call: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            let call = &rest[..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let token = format!("{method}(");
                let found = call.match_indices(&token).any(|(i, _)| {
                    call[..i]
                        .chars()
                        .last()
                        .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
                });
                if found {
                    routes.insert((method.to_string(), path.to_string()));
                }
            }
        }
    }
    routes
}

/// Every `$ref` in the document.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_api_route_and_needs_a_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = '{}'\n[web]\nlisten = \"127.0.0.1:0\"\n[broker]\nmode = \"off\"\n",
        dir.path().display()
    );
    let config = Config::parse_toml(&text, "test").unwrap();
    let running = printgate::start(config, CancellationToken::new())
        .await
        .unwrap();
    auth::ensure_demo_account(&running.gateway.store).unwrap();
    let url = format!("http://{}/api/v1/openapi.json", running.web_addr);
    let http = reqwest::Client::new();

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);

    let resp = http
        .get(&url)
        .header(auth::API_KEY_HEADER, auth::DEMO_API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: serde_json::Value = resp.json().await.expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "printgate");

    // Every API route of the router is documented with the same methods, and nothing else.
    let routes = api_routes();
    assert!(
        routes.len() >= 18,
        "the source scan found the API routes: {routes:?}"
    );
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    assert_eq!(documented, routes, "documented vs. routed (method, path)");

    // The schemas the API returns are named, and every reference resolves.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "PrinterView",
        "PlateView",
        "HmsView",
        "JobView",
        "ApiOutcome",
        "ApiTap",
        "UploadRequest",
        "ApiControl",
        "ErrorBody",
        "ApiAlertTarget",
        "NewAlertTarget",
        "ResetBody",
        "PowerBody",
        "Delivery",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas.contains_key(name), "dangling reference {r}");
    }
    assert_eq!(
        doc["paths"]["/api/v1/printers"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"]["items"]["$ref"],
        "#/components/schemas/PrinterView"
    );
    assert!(
        routes.contains(&(
            "post".to_string(),
            "/api/v1/safety/emergency-stop".to_string()
        )),
        "the scan covers the safety room: {routes:?}"
    );
    assert_eq!(
        doc["paths"]["/api/v1/safety/reset"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/ResetBody"
    );
    let security = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert_eq!(security["api_key"]["name"], auth::API_KEY_HEADER);

    running.shutdown().await;
}

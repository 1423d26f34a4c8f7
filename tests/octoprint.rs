//! OctoPrint-compatible upload as slicers send it: PrusaSlicer/OrcaSlicer (`X-Api-Key`,
//! multipart `file` + `print` + `path`) and Cura's OctoPrint plugin (`select`/`print` fields)
//! land the file in the queue — `print=true` still waits for Plate clear — and bad requests get
//! OctoPrint's status codes with a clear message.

mod common;

use common::{TestGateway, demo_api_token, fixture_bytes, starts};
use printgate::config::Model;
use printgate::jobs::model::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slicer_uploads_queue_the_job_and_nothing_starts_without_a_tap() {
    let t = TestGateway::start(&[Model::P1S], 300.0).await;
    t.wait_online().await;
    let key = demo_api_token(&t.gw().store);
    let client = reqwest::Client::new();

    // Connection test both slicers make first.
    let v: serde_json::Value = client
        .get(t.url("/api/version"))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        v["api"].is_string() && v["server"].is_string() && v["text"].is_string(),
        "{v}"
    );

    // PrusaSlicer's shape.
    let form = reqwest::multipart::Form::new()
        .text("print", "true")
        .text("path", "")
        .part(
            "file",
            reqwest::multipart::Part::bytes(fixture_bytes(Model::P1S, 600))
                .file_name("bracket_PLA_12m.gcode.3mf")
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    let r = client
        .post(t.url("/api/files/local"))
        .header("X-Api-Key", &key)
        .header("User-Agent", "PrusaSlicer/2.8.1")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["done"], true);
    assert_eq!(body["files"]["local"]["origin"], "local");

    // Cura's plugin shape (select + print as form fields).
    let form = reqwest::multipart::Form::new()
        .text("select", "true")
        .text("print", "true")
        .part(
            "file",
            reqwest::multipart::Part::bytes(fixture_bytes(Model::P1S, 900))
                .file_name("cura.gcode.3mf"),
        );
    let r = client
        .post(t.url("/api/files/local"))
        .header("X-Api-Key", &key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Both queued, neither started: print=true waits for Plate clear.
    let queued = t
        .gw()
        .store
        .jobs_in_states(&[JobState::Queued, JobState::Staged])
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert!(starts(&t.sims[0]).is_empty());

    // Bad requests: no file → 400, wrong kind → 415, wrong key → 401; nothing queued.
    let r = client
        .post(t.url("/api/files/local"))
        .header("X-Api-Key", &key)
        .multipart(reqwest::multipart::Form::new().text("print", "true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("file"));
    let r = client
        .post(t.url("/api/files/local"))
        .header("X-Api-Key", &key)
        .multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"solid cube".to_vec()).file_name("cube.stl"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = client
        .post(t.url("/api/files/local"))
        .header("X-Api-Key", "wrong")
        .multipart(reqwest::multipart::Form::new().text("print", "true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        t.gw()
            .store
            .jobs_in_states(&[JobState::Queued, JobState::Staged])
            .unwrap()
            .len(),
        2
    );
    t.shutdown().await;
}

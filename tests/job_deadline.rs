//! A job with a start deadline that passes before anyone taps Plate clear expires and is never
//! started later; a bad deadline value is refused with a clear message and nothing is queued.

mod common;

use common::{TestGateway, demo_api_token, fixture_bytes};
use printgate::config::Model;
use printgate::jobs::model::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_never_starts() {
    let t = TestGateway::start(&[Model::P1S], 300.0).await;
    t.wait_online().await;
    let token = demo_api_token(&t.gw().store);
    let client = reqwest::Client::new();
    let upload = |within: &str| {
        let form = reqwest::multipart::Form::new()
            .text("printer", "printer 1")
            .text("start_within_minutes", within.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(fixture_bytes(Model::P1S, 600))
                    .file_name("late.gcode.3mf"),
            );
        client
            .post(t.url("/api/v1/jobs"))
            .header("X-Api-Key", &token)
            .multipart(form)
            .send()
    };
    let r = upload("soon").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("start_within_minutes"));

    // 0.01 min = 600 ms.
    let r = upload("0.01").await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let job = t.wait_job(id, JobState::Expired).await;
    assert_eq!(job.state, JobState::Expired);
    // A tap now starts nothing.
    t.tap("printer 1", "late-tap").await;
    assert!(common::starts(&t.sims[0]).is_empty());
    t.shutdown().await;
}

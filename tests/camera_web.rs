//! Issue 18: `GET /printers/<name>/snapshot.jpg` on the real gateway against simulated
//! printers on ephemeral loopback ports: the picture (read back with jpeg-decoder, not ours),
//! one upstream connection at the printer for ten viewers, and every "no picture" said in words
//! with its status; the picture confirmed with a tap and the finished plate in History. One test starts `printgate sim` as a user does and configures the
//! gateway from its printer table's `camera_port` column.

mod common;

use common::{Browser, TestGateway};
use printgate::config::{Config, Model, TlsMode};
use printgate::printer::bambu::camera::CameraStream;
use printgate::printer::bambu::tls::{MemoryPinStore, PrinterTls};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn decodes(jpeg: &[u8]) -> bool {
    jpeg_decoder::Decoder::new(jpeg).decode().is_ok()
}

async fn get(b: &Browser, path: &str) -> reqwest::Response {
    b.http
        .get(format!("{}{path}", b.base))
        .header("cookie", &b.cookie)
        .send()
        .await
        .expect("the gateway answers")
}

#[tokio::test]
async fn snapshot_route_serves_the_plate_to_ten_viewers_over_one_camera_connection() {
    let tg = TestGateway::start(&[Model::P1S, Model::X1C, Model::A1], 1.0).await;
    tg.wait_online().await;
    let b = tg.browser().await;
    let path = "/printers/printer%201/snapshot.jpg";

    // Not signed in: no picture.
    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(tg.url(path))
        .send()
        .await
        .unwrap();
    assert_ne!(anon.status(), 200, "the camera is behind the sign-in");
    assert_ne!(
        anon.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"image/jpeg"[..])
    );
    assert_eq!(tg.sims[0].camera().unwrap().connections(), 0);

    let answers = futures::future::join_all((0..10).map(|_| get(&b, path))).await;
    for r in answers {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "image/jpeg");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.headers().contains_key("last-modified"));
        let body = r.bytes().await.unwrap();
        assert!(decodes(&body), "a JPEG jpeg-decoder reads");
    }
    let cam = tg.sims[0].camera().unwrap();
    assert_eq!(
        cam.connections(),
        1,
        "ten viewers, one connection at the printer"
    );
    assert_eq!(cam.streams_served(), 1);

    // An RTSPS model: 404 in words.
    let r = get(&b, "/printers/printer%202/snapshot.jpg").await;
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    assert!(text.contains("not supported yet"), "{text}");
    assert!(text.contains("RTSPS"), "{text}");

    // No such printer.
    let r = get(&b, "/printers/nobody/snapshot.jpg").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no printer called"));

    // Another client holds the A1's one camera slot: 503 camera busy, asked once.
    let a1 = &tg.sims[2];
    let addr: SocketAddr = format!("{}:{}", a1.host(), a1.camera_port().unwrap())
        .parse()
        .unwrap();
    let tls = PrinterTls::new(a1.serial(), TlsMode::Pin, Arc::new(MemoryPinStore::new()))
        .unwrap()
        .client_config();
    let mut studio = CameraStream::connect(addr, a1.serial(), tls, &a1.access_code())
        .await
        .unwrap();
    studio
        .next_frame()
        .await
        .expect("the other client is served");
    for _ in 0..3 {
        let r = get(&b, "/printers/printer%203/snapshot.jpg").await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let text = r.text().await.unwrap();
        assert!(text.contains("camera busy"), "{text}");
    }
    assert_eq!(
        a1.camera().unwrap().connections(),
        2,
        "the other client and one attempt of printgate's"
    );
    studio
        .next_frame()
        .await
        .expect("the other client keeps its stream");
    tg.shutdown().await;
}

/// `printgate sim` in its own process; killed when dropped.
struct SimProcess(std::process::Child);
impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim_process() -> (SimProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_printgate"))
        .args(["sim", "--printers", "1", "--models", "P1S", "--no-ssdp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("printgate sim starts");
    let stdout = child.stdout.take().expect("stdout");
    let proc = SimProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("printgate sim printed its printer table within 60 s");
        if !line.starts_with('#') && !line.trim().is_empty() {
            return (proc, line);
        }
    }
}

#[tokio::test]
async fn the_camera_port_printed_by_printgate_sim_configures_the_gateway() {
    let (_sim, row) = start_sim_process();
    let f: Vec<&str> = row.split(' ').collect();
    let [name, model, serial, host, mqtt, ftps, camera, code, _fp] = f.as_slice() else {
        panic!("name model serial host mqtt ftps camera code fp: {row}");
    };
    assert_ne!(*camera, "-", "a P1S has a chamber camera: {row}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printgate.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {data:?}\n\n[web]\nlisten = \"127.0.0.1:0\"\n\n[broker]\nmode = \"off\"\n\n\
             [[printers]]\nname = {name:?}\nmodel = {model:?}\nserial = {serial:?}\nhost = {host:?}\n\
             access_code = {code:?}\nmqtt_port = {mqtt}\nftps_port = {ftps}\ncamera_port = {camera}\n",
            data = dir.path().join("data"),
        ),
    )
    .unwrap();
    let config = Config::load(&path).expect("the config loads");
    assert_eq!(config.printers[0].camera_port.to_string(), *camera);
    let shutdown = CancellationToken::new();
    let running = printgate::start(config, shutdown.clone())
        .await
        .expect("gateway starts");
    let b = Browser::sign_in(running.web_addr, &running.gateway.store).await;
    let r = get(&b, &format!("/printers/{}/snapshot.jpg", urlencode(name))).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert!(decodes(&r.bytes().await.unwrap()));
    running.shutdown().await;
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Share of strongly orange pixels (the printed object) in the simulated plate region.
fn object_share(jpeg: &[u8]) -> f64 {
    let mut d = jpeg_decoder::Decoder::new(jpeg);
    let px = d.decode().expect("a JPEG jpeg-decoder can read");
    let w = u32::from(d.info().expect("info").width);
    let (x0, y0, rw, rh) = printgate::sim::camera::PLATE_REGION;
    let mut hits = 0u32;
    for y in y0..y0 + rh {
        for x in x0..x0 + rw {
            let i = ((y * w + x) * 3) as usize;
            let (r, b) = (i32::from(px[i]), i32::from(px[i + 2]));
            if r - b > 100 && r > 150 {
                hits += 1;
            }
        }
    }
    f64::from(hits) / f64::from(rw * rh)
}

/// The picture and caption of a Plate clear confirmation page.
fn page_picture(html: &str) -> Option<(Vec<u8>, String)> {
    use base64::Engine;
    let marker = "src=\"data:image/jpeg;base64,";
    let at = html.find(marker)? + marker.len();
    let b64 = &html[at..at + html[at..].find('"')?];
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 picture");
    let cap_at = html.find("<figcaption>")? + "<figcaption>".len();
    let caption = html[cap_at..cap_at + html[cap_at..].find("</figcaption>")?].to_string();
    Some((jpeg, caption))
}

#[tokio::test]
async fn the_plate_clear_confirmation_shows_a_fresh_picture_or_says_why_not_and_still_confirms() {
    let tg = TestGateway::start(&[Model::P1S, Model::X1C, Model::A1], 600.0).await;
    tg.wait_online().await;
    let b = tg.browser().await;
    let page = |p: &'static str| {
        let b = &b;
        async move {
            let r = get(b, &format!("/printers/{p}/plate-clear")).await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };

    // Empty plate.
    let html = page("printer%201").await;
    let (jpeg, caption) = page_picture(&html).expect("a picture on the page");
    assert!(
        object_share(&jpeg) < 0.01,
        "empty plate: {}",
        object_share(&jpeg)
    );
    assert!(caption.contains("taken "), "{caption}");
    assert!(caption.contains("ago, when this page opened"), "{caption}");

    // A print finishes on the printer: the confirmation shows the object still on the plate.
    common::start_screen_print(&tg.sims[0], "cube", 600);
    tg.sims[0]
        .wait_truth(Duration::from_secs(30), |t| {
            t.gcode_state == printgate::printer::GcodeState::Finish
        })
        .await
        .expect("print finishes");
    let mut share = 0.0;
    for _ in 0..20 {
        let html = page("printer%201").await;
        let (jpeg, caption) = page_picture(&html).expect("a picture");
        share = object_share(&jpeg);
        assert!(caption.contains("taken "), "{caption}");
        if share > 0.2 {
            break;
        }
        // The previous picture was younger than 2 s; a newer frame comes within a second.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        share > 0.2,
        "the finished object is on the picture: {share}"
    );

    // No camera printgate reads (X1C): the page says so and the tap works the same.
    let html = page("printer%202").await;
    assert!(page_picture(&html).is_none());
    assert!(html.contains("No camera picture:"), "{html}");
    assert!(html.contains("not supported yet"), "{html}");
    assert!(html.contains("you can confirm without a picture"), "{html}");
    let tap_at = html.find("name=\"tap_id\" value=\"").unwrap() + "name=\"tap_id\" value=\"".len();
    let tap_id = &html[tap_at..tap_at + html[tap_at..].find('"').unwrap()];
    let r = b
        .post_form(
            "/printers/printer%202/plate-clear",
            &[("confirm", "yes"), ("tap_id", tap_id)],
        )
        .await;
    let notice = common::redirect_notice(&r);
    assert!(notice.contains("marked clear"), "{notice}");

    // A busy camera (A1): the page opens at once, says "camera busy" and keeps its form.
    let a1 = &tg.sims[2];
    let addr: SocketAddr = format!("{}:{}", a1.host(), a1.camera_port().unwrap())
        .parse()
        .unwrap();
    let tls = PrinterTls::new(a1.serial(), TlsMode::Pin, Arc::new(MemoryPinStore::new()))
        .unwrap()
        .client_config();
    let mut studio = CameraStream::connect(addr, a1.serial(), tls, &a1.access_code())
        .await
        .unwrap();
    studio
        .next_frame()
        .await
        .expect("the other client is served");
    let opened = Instant::now();
    let html = page("printer%203").await;
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "the page never waits long for the camera: {:?}",
        opened.elapsed()
    );
    assert!(html.contains("No camera picture: camera busy"), "{html}");
    assert!(html.contains("name=\"confirm\""), "the form is there");
    tg.shutdown().await;
}

/// The History row of the start of job `id` (its `<tr>`), from the page's HTML.
fn history_row(html: &str, id: i64) -> String {
    let marker = format!("printgate job {id}");
    let at = html
        .match_indices(&marker)
        .map(|(at, _)| at)
        .find(|at| !html[at + marker.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no history row for job {id}: {html}"));
    let start = html[..at].rfind("<tr>").expect("row start");
    let end = at + html[at..].find("</tr>").expect("row end");
    html[start..end].to_string()
}

/// The address of the picture in `row` whose alt text says `what`.
fn picture_url(row: &str, what: &str) -> Option<String> {
    let alt = row.find(what)?;
    let at = row[..alt].rfind("src=\"")? + "src=\"".len();
    Some(row[at..at + row[at..].find('"')?].to_string())
}

#[tokio::test]
async fn a_tap_without_a_camera_picture_starts_the_job_and_history_says_there_was_none() {
    let tg = TestGateway::start(&[Model::X1C, Model::P1S], 600.0).await;
    tg.wait_online().await;
    let b = tg.browser().await;

    // The X1C's camera is one printgate cannot read: the confirmation has no picture…
    let job = tg.queue(Some("printer 1"), Model::X1C, "no-picture").await;
    let r = get(&b, "/printers/printer%201/plate-clear").await;
    let html = r.text().await.unwrap();
    assert!(page_picture(&html).is_none());
    assert!(html.contains("No camera picture:"), "{html}");
    let tap_at = html.find("name=\"tap_id\" value=\"").unwrap() + "name=\"tap_id\" value=\"".len();
    let tap_id = &html[tap_at..tap_at + html[tap_at..].find('"').unwrap()];
    // …and the tap starts the job the same.
    let r = b
        .post_form(
            "/printers/printer%201/plate-clear",
            &[("confirm", "yes"), ("tap_id", tap_id)],
        )
        .await;
    let notice = common::redirect_notice(&r);
    assert!(!notice.contains("not accepted"), "{notice}");
    tg.wait_job(job.id, printgate::jobs::model::JobState::Printing)
        .await;

    // A P1S started by a tap from the API (no confirmation page): no picture either.
    let api_job = tg.queue(Some("printer 2"), Model::P1S, "api-tap").await;
    let notices = tg.tap("printer 2", "api-tap-1").await;
    assert!(
        notices.iter().all(|n| !n.contains("not accepted")),
        "{notices:?}"
    );
    tg.wait_job(api_job.id, printgate::jobs::model::JobState::Printing)
        .await;

    let r = get(&b, "/history").await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    for id in [job.id, api_job.id] {
        let row = history_row(&html, id);
        assert!(row.contains("No camera picture with this tap"), "{row}");
        assert!(!row.contains("that was confirmed as clear"), "{row}");
    }
    // The X1C's print ends: no camera printgate reads, so History says there is no end picture.
    tg.wait_job(job.id, printgate::jobs::model::JobState::Finished)
        .await;
    let html = get(&b, "/history").await.text().await.unwrap();
    let row = history_row(&html, job.id);
    assert!(row.contains("No camera picture when it ended"), "{row}");
    assert!(!row.contains("/plate-pictures/"), "{row}");

    // A picture that is not there is answered in words.
    let r = get(&b, "/plate-pictures/999").await;
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("no stored camera picture 999")
    );
    let r = get(&b, "/plate-pictures/latest").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("not a picture number"));
    tg.shutdown().await;
}

#[tokio::test]
async fn history_shows_the_confirmed_plate_and_the_finished_plate_only_when_signed_in() {
    let tg = TestGateway::start(&[Model::P1S], 600.0).await;
    tg.wait_online().await;
    let b = tg.browser().await;
    let job = tg
        .queue(Some("printer 1"), Model::P1S, "with-picture")
        .await;
    let html = get(&b, "/printers/printer%201/plate-clear")
        .await
        .text()
        .await
        .unwrap();
    let (seen, _) = page_picture(&html).expect("a picture on the confirmation");
    let tap_at = html.find("name=\"tap_id\" value=\"").unwrap() + "name=\"tap_id\" value=\"".len();
    let tap_id = &html[tap_at..tap_at + html[tap_at..].find('"').unwrap()];
    let form = [("confirm", "yes"), ("tap_id", tap_id)];
    let r = b
        .post_form("/printers/printer%201/plate-clear", &form)
        .await;
    assert!(common::redirect_notice(&r).contains("marked clear"));
    // The same form sent again (a double submit) is one tap and keeps the first picture.
    b.post_form("/printers/printer%201/plate-clear", &form)
        .await;
    tg.wait_job(job.id, printgate::jobs::model::JobState::Printing)
        .await;

    let html = get(&b, "/history").await.text().await.unwrap();
    let row = history_row(&html, job.id);
    let url = picture_url(&row, "that was confirmed as clear").expect("a confirmed picture");
    let r = get(&b, &url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let confirmed = r.bytes().await.unwrap();
    assert_eq!(confirmed, seen, "the very picture the page showed");
    assert!(object_share(&confirmed) < 0.01, "the plate was empty");

    // The print finishes: History shows the finished plate too, beside the confirmed one.
    tg.wait_job(job.id, printgate::jobs::model::JobState::Finished)
        .await;
    let mut end_url = None;
    for _ in 0..150 {
        let html = get(&b, "/history").await.text().await.unwrap();
        end_url = picture_url(&history_row(&html, job.id), "when this print ended");
        if end_url.is_some() {
            break;
        }
        // Kept by a task of its own once the camera's next frame came (bounded: 15 s).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end_url = end_url.expect("History shows the plate at the end of the print");
    let at_end = get(&b, &end_url).await.bytes().await.unwrap();
    assert!(
        object_share(&at_end) > 0.2,
        "the finished object is on the end picture: {}",
        object_share(&at_end)
    );
    assert_eq!(
        get(&b, &url).await.bytes().await.unwrap(),
        seen,
        "the confirmed picture stays as it was"
    );

    let anon = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(tg.url(&end_url))
        .send()
        .await
        .unwrap();
    assert_ne!(anon.status(), 200, "stored pictures are behind the sign-in");
    tg.shutdown().await;
}

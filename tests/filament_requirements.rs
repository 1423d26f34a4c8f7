//! Issue 21, requirements from the 3MF: at upload printgate reads what filaments each plate
//! needs from `Metadata/slice_info.config` (`<filament id type color used_g used_m>`), refuses a
//! file whose list it cannot use with the reason in words (never a panic, whatever the file
//! holds), records the list with the job and shows it on the queue row and in
//! `GET /api/v1/jobs`.

mod common;

use common::TestGateway;
use printgate::config::Model;
use printgate::jobs::filament::requirements;
use printgate::jobs::threemf::{FileError, ZipLimits, inspect};
use printgate::sim::fixtures::{Fixture3mf, build_3mf, with_entry};
use proptest::prelude::*;
use std::io::Cursor;

/// A sliced P1S file whose `Metadata/slice_info.config` is `slice_info`.
fn file_with(slice_info: &[u8]) -> Vec<u8> {
    let base = build_3mf(&Fixture3mf {
        slice_info: false,
        ..Fixture3mf::for_model(Model::P1S)
    });
    with_entry(base, "Metadata/slice_info.config", slice_info)
}

fn plate_xml(filaments: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<config>
  <header>
    <header_item key="X-BBL-Client-Type" value="slicer"/>
    <header_item key="X-BBL-Client-Version" value="02.01.01.52"/>
  </header>
  <plate>
    <metadata key="index" value="1"/>
    <metadata key="printer_model_id" value="C12"/>
    <metadata key="nozzle_diameters" value="0.4"/>
    <metadata key="prediction" value="2718"/>
    <metadata key="weight" value="15.34"/>
    <object identify_id="120" name="cube.stl" skipped="false" />
{filaments}
  </plate>
</config>
"#
    )
}

const TWO: &str = r##"    <filament id="1" tray_info_idx="GFA00" type="PLA" color="#FFFFFF" used_m="4.12" used_g="12.34" />
    <filament id="3" tray_info_idx="GFG02" type="PETG" color="#0A2989" used_m="1.01" used_g="3.00" />"##;

#[test]
fn a_two_filament_plate_is_read_in_file_order() {
    let info = inspect(
        Cursor::new(file_with(plate_xml(TWO).as_bytes())),
        &ZipLimits::default(),
    )
    .expect("valid file");
    let needs = requirements(info.plate(1).expect("plate 1")).expect("usable list");
    let got: Vec<_> = needs
        .iter()
        .map(|r| (r.id, r.material.as_str(), r.color.as_str(), r.used_g))
        .collect();
    assert_eq!(
        got,
        [
            (1, "PLA", "#FFFFFF", Some(12.34)),
            (3, "PETG", "#0A2989", Some(3.0))
        ]
    );
    assert_eq!(needs[1].describe(), "PETG · blue · 3.0 g");
}

/// The slice_info.config of jdempsey77/filament-iq's tests (MIT; copied with its licence in
/// tests/fixtures/slice_info/): a plate without an index, filament number 0, an 8-digit colour.
#[test]
fn filament_iq_sample_is_read() {
    let xml = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/slice_info/filament-iq.config"
    ))
    .expect("fixture");
    let info = inspect(Cursor::new(file_with(&xml)), &ZipLimits::default()).expect("valid");
    let needs = requirements(info.plate(1).expect("plate 1 by position")).expect("list");
    assert_eq!(needs.len(), 1);
    assert_eq!(
        (
            needs[0].id,
            needs[0].material.as_str(),
            needs[0].color.as_str()
        ),
        (0, "PLA", "#AFB1AE")
    );
    assert_eq!(
        (needs[0].used_g, needs[0].used_m),
        (Some(42.96), Some(14.32))
    );
}

#[test]
fn hostile_lists_are_refused_in_words() {
    let cases = [
        (
            r##"<filament id="1" type="PLA" color="#GG0000" used_g="1"/>"##,
            "plate 1, filament 1 of Metadata/slice_info.config has the colour \"#GG0000\", which is not a #RRGGBB colour",
        ),
        (
            r##"<filament id="1" type="" color="#FFFFFF"/>"##,
            "plate 1, filament 1 of Metadata/slice_info.config has no material (`type`)",
        ),
        (
            r##"<filament id="2" type="PLA&quot;&gt;&lt;b&gt;" color="#FFFFFF"/>"##,
            "names its material \"PLA\\\"><b>\", which is not a filament type",
        ),
        (
            r##"<filament id="2" type="PLA" color="#FFFFFF"/><filament id="2" type="PLA" color="#000000"/>"##,
            "plate 1 lists filament number 2 twice",
        ),
        (
            r##"<filament id="99999999999" type="PLA" color="#FFFFFF"/>"##,
            "plate 1, filament 1 of Metadata/slice_info.config has no number (`id`)",
        ),
    ];
    for (filaments, want) in cases {
        let e = inspect(
            Cursor::new(file_with(plate_xml(filaments).as_bytes())),
            &ZipLimits::default(),
        )
        .expect_err(want);
        let text = e.to_string();
        assert!(matches!(e, FileError::Damaged { .. }), "{text}");
        assert!(text.contains(want), "{text}\nwanted: {want}");
        assert!(text.contains("export it again from the slicer"), "{text}");
    }
}

fn attr_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("PLA".to_string()),
        Just("PETG-CF".to_string()),
        Just("#FFFFFF".to_string()),
        Just("#00000000".to_string()),
        Just("1".to_string()),
        Just("-1".to_string()),
        Just("1e309".to_string()),
        Just("NaN".to_string()),
        Just("&amp;&lt;".to_string()),
        Just("&#0;".to_string()),
        Just("&bogus;".to_string()),
        Just("\"".to_string()),
        Just("é€\u{202e}".to_string()),
        "[ -~]{0,12}",
        "#[0-9A-Fa-f]{0,9}",
        "[0-9]{1,12}",
        "x{200,400}",
    ]
}

fn filament_element() -> impl Strategy<Value = String> {
    let attr = prop_oneof![
        Just("id"),
        Just("type"),
        Just("color"),
        Just("used_g"),
        Just("used_m"),
        Just("tray_info_idx"),
    ];
    prop::collection::vec((attr, attr_value()), 0..7).prop_map(|attrs| {
        let body: String = attrs.iter().map(|(k, v)| format!(" {k}=\"{v}\"")).collect();
        format!("<filament{body}/>")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any filament list, well-formed or not: the upload check answers (a usable list, or an
    /// error that names slice_info.config or the damage), never panics, and whatever it accepts
    /// `requirements` accepts too.
    #[test]
    fn any_filament_list_gets_an_answer_in_words(
        elements in prop::collection::vec(filament_element(), 0..40),
        junk in prop::option::of("[<>&\"a-z/ ]{0,40}"),
    ) {
        let mut filaments = elements.join("\n");
        if let Some(j) = junk {
            filaments.push_str(&j);
        }
        match inspect(Cursor::new(file_with(plate_xml(&filaments).as_bytes())), &ZipLimits::default()) {
            Ok(info) => {
                for p in &info.plates {
                    prop_assert!(requirements(p).is_ok(), "accepted but unusable: {filaments}");
                }
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains("slice_info.config") || text.contains("damaged"), "{text}");
                prop_assert!(text.contains("export it again"), "{text}");
            }
        }
    }

    /// Arbitrary bytes as slice_info.config.
    #[test]
    fn any_bytes_as_slice_info_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = inspect(Cursor::new(file_with(&bytes)), &ZipLimits::default()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_row_and_the_api_show_what_a_job_needs() {
    let tg = TestGateway::start(&[Model::P1S], 1.0).await;
    tg.wait_online().await;
    let api = tg.api();
    let up = api
        .upload(
            "two colours.gcode.3mf",
            file_with(plate_xml(TWO).as_bytes()),
            Some("printer 1"),
            Some("two-colours"),
        )
        .await
        .expect("upload answers");
    assert_eq!(up.status, 201, "{:?}", up.body);
    let id = up.job_id().expect("job id");
    let texts = |v: &serde_json::Value| -> Vec<String> {
        v["filaments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["text"].as_str().map(str::to_string))
            .collect()
    };
    let want = ["PLA · white · 12.3 g", "PETG · blue · 3.0 g"];
    assert_eq!(texts(&up.body), want, "the upload's answer");
    let jobs = api.jobs().await.expect("jobs").body;
    let job = jobs
        .as_array()
        .and_then(|a| a.iter().find(|j| j["id"] == id))
        .cloned()
        .expect("the job is queued");
    assert_eq!(texts(&job), want);
    assert_eq!(job["filaments"][1]["color"], "#0A2989");
    assert_eq!(job["filaments"][1]["id"], 3);

    // Recorded with the job: what the row shows comes from the job's row, not the file.
    let recorded = tg.gw().store.job_filaments(&[id]).expect("store");
    assert!(
        recorded.get(&id).is_some_and(|j| j.contains("\"PETG\"")),
        "{recorded:?}"
    );

    // The dashboard's queue row says it in words, with a swatch per filament.
    let browser = tg.browser().await;
    let page = browser
        .http
        .get(tg.url("/"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .expect("dashboard")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("data-field=\"job-filaments\">Needs: "),
        "{page}"
    );
    for w in want {
        assert!(page.contains(w), "{w} missing");
    }
    assert!(page.contains("background:#0A2989"));

    // A hostile list is refused at upload, in words, and queues nothing.
    let bad = plate_xml(r#"<filament id="1" type="PLA" color="red"/>"#);
    let refused = api
        .upload(
            "bad.gcode.3mf",
            file_with(bad.as_bytes()),
            Some("printer 1"),
            None,
        )
        .await
        .expect("upload answers");
    assert_eq!(refused.status, 422, "{:?}", refused.body);
    let text = refused.body.to_string();
    assert!(
        text.contains(
            "plate 1, filament 1 of Metadata/slice_info.config has the colour \\\"red\\\""
        ),
        "{text}"
    );
    let after = api.jobs().await.expect("jobs").body;
    assert_eq!(after.as_array().map(Vec::len), Some(1), "{after}");
    tg.shutdown().await;
}

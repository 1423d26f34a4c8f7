//! Test print files: a realistic Bambu-style sliced `.gcode.3mf` builder (the layout Bambu
//! Studio's "export plate sliced file" writes: OPC parts, 3D model, per-plate G-code with its
//! MD5, slice_info.config, plate JSON, thumbnails, model/project settings), plain G-code, and
//! hostile archives (zip bombs, truncated files) for the validation tests. Used by the
//! simulator, `demo` and the tests.

use crate::config::Model;
use md5::{Digest, Md5};
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// What [`build_3mf`] puts in the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture3mf {
    /// Printer model the plates are "sliced" for (`printer_model_id`).
    pub model: Model,
    /// Number of sliced plates (`Metadata/plate_1.gcode` … `plate_<plates>.gcode`).
    pub plates: u32,
    /// Predicted print time per plate, seconds.
    pub prediction_secs: u64,
    /// Filament weight per plate, grams.
    pub weight_g: f64,
    /// Layers in each plate's G-code (the simulator walks them).
    pub layers: u32,
    /// `bed_type` of `Metadata/plate_<N>.json`.
    pub bed_type: String,
    pub filament_type: String,
    pub filament_color: String,
    pub nozzle_diameter: f64,
    /// Extra bytes of G-code moves appended to plate 1, stored uncompressed (makes 50 MB or
    /// 100 MB files quickly).
    pub gcode_padding_bytes: u64,
    /// Include `Metadata/plate_<N>.png` thumbnails.
    pub thumbnails: bool,
    /// Include the plate G-code (false = an unsliced project, which uploads must refuse).
    pub plate_gcode: bool,
    /// Include `Metadata/slice_info.config`.
    pub slice_info: bool,
    /// Extra small entries (`Metadata/extra_<i>.txt`), to test entry-count limits.
    pub extra_entries: u32,
}

impl Default for Fixture3mf {
    fn default() -> Self {
        Fixture3mf {
            model: Model::P1S,
            plates: 1,
            prediction_secs: 2718,
            weight_g: 12.34,
            layers: 50,
            bed_type: "textured_plate".into(),
            filament_type: "PLA".into(),
            filament_color: "#00AE42".into(),
            nozzle_diameter: 0.4,
            gcode_padding_bytes: 0,
            thumbnails: true,
            plate_gcode: true,
            slice_info: true,
            extra_entries: 0,
        }
    }
}

impl Fixture3mf {
    /// The default fixture sliced for `model`.
    pub fn for_model(model: Model) -> Fixture3mf {
        Fixture3mf {
            model,
            ..Fixture3mf::default()
        }
    }
}

const SLICER_VERSION: &str = "01.09.07.52";

/// Build a sliced `.gcode.3mf` as Bambu Studio lays it out.
pub fn build_3mf(opts: &Fixture3mf) -> Vec<u8> {
    let capacity = usize::try_from(opts.gcode_padding_bytes).unwrap_or(0) + 64 * 1024;
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(capacity)));
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let plates: Vec<u32> = (1..=opts.plates.max(1)).collect();

    // Building in memory cannot fail except through a bug in this builder.
    let put = |zip: &mut ZipWriter<Cursor<Vec<u8>>>, name: &str, data: &[u8]| {
        zip.start_file(name, deflated).expect("fixture zip entry");
        zip.write_all(data).expect("fixture zip write");
    };

    put(&mut zip, "[Content_Types].xml", CONTENT_TYPES.as_bytes());
    put(&mut zip, "_rels/.rels", RELS.as_bytes());
    put(&mut zip, "3D/3dmodel.model", model_xml(opts).as_bytes());
    if opts.plate_gcode {
        for &n in &plates {
            let padding = if n == 1 { opts.gcode_padding_bytes } else { 0 };
            let options = if padding > 0 { stored } else { deflated };
            zip.start_file(format!("Metadata/plate_{n}.gcode"), options)
                .expect("fixture zip entry");
            let mut md5 = Md5::new();
            let mut emit = |zip: &mut ZipWriter<Cursor<Vec<u8>>>, bytes: &[u8]| {
                md5.update(bytes);
                zip.write_all(bytes).expect("fixture zip write");
            };
            emit(&mut zip, gcode_head(opts).as_bytes());
            emit(&mut zip, gcode_body(opts).as_bytes());
            let block = padding_block();
            let mut left = padding;
            while left > 0 {
                let take = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
                emit(&mut zip, block.get(..take).unwrap_or_default());
                left -= take as u64;
            }
            emit(&mut zip, GCODE_TAIL.as_bytes());
            let digest = hex::encode_upper(md5.finalize());
            put(
                &mut zip,
                &format!("Metadata/plate_{n}.gcode.md5"),
                digest.as_bytes(),
            );
        }
    }
    for &n in &plates {
        put(
            &mut zip,
            &format!("Metadata/plate_{n}.json"),
            plate_json(opts).as_bytes(),
        );
        if opts.thumbnails {
            let png = png_rgb(32, 32, color_rgb(&opts.filament_color));
            put(&mut zip, &format!("Metadata/plate_{n}.png"), &png);
            let small = png_rgb(8, 8, color_rgb(&opts.filament_color));
            put(&mut zip, &format!("Metadata/plate_{n}_small.png"), &small);
        }
    }
    put(
        &mut zip,
        "Metadata/model_settings.config",
        model_settings(opts, &plates).as_bytes(),
    );
    put(
        &mut zip,
        "Metadata/project_settings.config",
        project_settings(opts).as_bytes(),
    );
    if opts.slice_info {
        put(
            &mut zip,
            "Metadata/slice_info.config",
            slice_info(opts, &plates).as_bytes(),
        );
    }
    for i in 0..opts.extra_entries {
        put(&mut zip, &format!("Metadata/extra_{i}.txt"), b"x");
    }
    zip.finish().expect("fixture zip finish").into_inner()
}

/// A plain G-code file with a PrusaSlicer-style header.
pub fn plain_gcode(layers: u32) -> Vec<u8> {
    let mut s = String::from("; generated by PrusaSlicer 2.7.1 on 2024-03-01 at 10:00:00 UTC\n");
    s.push_str("M140 S60\nM104 S215\nG28\nG90\nM83\n");
    for layer in 1..=layers {
        s.push_str(&format!(
            ";LAYER_CHANGE\n;Z:{:.2}\nG1 Z{:.2} F720\n",
            layer as f64 * 0.2,
            layer as f64 * 0.2
        ));
        s.push_str("G1 X120 Y120 E0.5 F1800\nG1 X130 Y120 E0.4\n");
    }
    s.push_str("M104 S0\nM140 S0\nM84\n");
    s.into_bytes()
}

/// A 3MF whose plate G-code honestly declares 1 GiB of zeros compressed about 158:1 (refused by
/// the per-entry ratio check before anything is decompressed).
pub fn zip_bomb() -> Vec<u8> {
    let size = 1 << 30;
    raw_zip_with_deflated_zeros("Metadata/plate_1.gcode", size, size)
}

/// A 3MF whose plate G-code declares 4 KiB but inflates to 1 GiB of zeros (only counting the
/// bytes that come out catches it).
pub fn zip_bomb_understated() -> Vec<u8> {
    raw_zip_with_deflated_zeros("Metadata/plate_1.gcode", 1 << 30, 4096)
}

/// `base` (a zip) with `count` more entries `Metadata/filler_<i>.bin`, each inflating to
/// `entry_bytes` zeros with a correct CRC: many small entries that together expand to a lot (a
/// zip bomb no single entry reveals). The zeros are compressed once and copied raw, so even
/// thousands of entries build in milliseconds.
pub fn with_zero_entries(base: Vec<u8>, count: u32, entry_bytes: u64) -> Vec<u8> {
    let mut template = ZipWriter::new(Cursor::new(Vec::new()));
    let deflated = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(9));
    template
        .start_file("zeros", deflated)
        .expect("fixture zip entry");
    let block = vec![0u8; 64 * 1024];
    let mut left = entry_bytes;
    while left > 0 {
        let take = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        template
            .write_all(block.get(..take).unwrap_or_default())
            .expect("fixture zip write");
        left -= take as u64;
    }
    let template = template.finish().expect("fixture zip finish").into_inner();
    let mut source = zip::ZipArchive::new(Cursor::new(template)).expect("fixture template");
    let mut zip = ZipWriter::new_append(Cursor::new(base)).expect("fixture zip to append to");
    for i in 0..count {
        let entry = source.by_index_raw(0).expect("fixture template entry");
        zip.raw_copy_file_rename(entry, format!("Metadata/filler_{i}.bin"))
            .expect("fixture raw copy");
    }
    zip.finish().expect("fixture zip finish").into_inner()
}

/// `base` (a zip) with one more deflated entry called exactly `name` (names a slicer never
/// writes: `../x`, `/etc/x`, `a\b`, `C:/x`).
pub fn with_entry(base: Vec<u8>, name: &str, data: &[u8]) -> Vec<u8> {
    let mut zip = ZipWriter::new_append(Cursor::new(base)).expect("fixture zip to append to");
    let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file(name, deflated).expect("fixture zip entry");
    zip.write_all(data).expect("fixture zip write");
    zip.finish().expect("fixture zip finish").into_inner()
}

/// The first `keep` bytes of `data` (an interrupted upload).
pub fn truncated(data: &[u8], keep: usize) -> Vec<u8> {
    data.get(..keep.min(data.len()))
        .unwrap_or_default()
        .to_vec()
}

const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
 <Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
 <Default Extension="model" ContentType="application/vnd.ms-package.3dmanufacturing-3dmodel+xml"/>
 <Default Extension="png" ContentType="image/png"/>
 <Default Extension="gcode" ContentType="text/x.gcode"/>
</Types>
"#;

const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
 <Relationship Target="/3D/3dmodel.model" Id="rel-1" Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/>
 <Relationship Target="/Metadata/plate_1.png" Id="rel-2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/thumbnail"/>
</Relationships>
"#;

fn model_xml(opts: &Fixture3mf) -> String {
    // A 20 mm cube: 8 vertices, 12 triangles.
    let v = [
        (0, 0, 0),
        (20, 0, 0),
        (20, 20, 0),
        (0, 20, 0),
        (0, 0, 20),
        (20, 0, 20),
        (20, 20, 20),
        (0, 20, 20),
    ];
    let t = [
        (0, 2, 1),
        (0, 3, 2),
        (4, 5, 6),
        (4, 6, 7),
        (0, 1, 5),
        (0, 5, 4),
        (1, 2, 6),
        (1, 6, 5),
        (2, 3, 7),
        (2, 7, 6),
        (3, 0, 4),
        (3, 4, 7),
    ];
    let vertices: String = v
        .iter()
        .map(|(x, y, z)| format!("     <vertex x=\"{x}\" y=\"{y}\" z=\"{z}\"/>\n"))
        .collect();
    let triangles: String = t
        .iter()
        .map(|(a, b, c)| format!("     <triangle v1=\"{a}\" v2=\"{b}\" v3=\"{c}\"/>\n"))
        .collect();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<model unit="millimeter" xml:lang="en-US" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/2015/02" xmlns:BambuStudio="http://schemas.bambulab.com/package/2021" requiredextensions="">
 <metadata name="Application">BambuStudio-{SLICER_VERSION}</metadata>
 <metadata name="BambuStudio:3mfVersion">1</metadata>
 <metadata name="Title">printgate fixture</metadata>
 <metadata name="Designer">printgate</metadata>
 <metadata name="CreationDate">2024-03-01</metadata>
 <resources>
  <object id="1" type="model">
   <mesh>
    <vertices>
{vertices}    </vertices>
    <triangles>
{triangles}    </triangles>
   </mesh>
  </object>
 </resources>
 <build>
  <item objectid="1" transform="1 0 0 0 1 0 0 0 1 118 118 0" printable="1"/>
 </build>
 <!-- sliced for {code} -->
</model>
"#,
        code = opts.model.model_code()
    )
}

fn gcode_head(opts: &Fixture3mf) -> String {
    let secs = opts.prediction_secs;
    format!(
        "; HEADER_BLOCK_START\n\
         ; BambuStudio {SLICER_VERSION}\n\
         ; model printing time: {m}m {s}s; total estimated time: {m}m {s}s\n\
         ; total layer number: {layers}\n\
         ; total filament length [mm] : {len:.2}\n\
         ; total filament volume [cm^3] : {vol:.2}\n\
         ; total filament weight [g] : {w:.2}\n\
         ; filament_density: 1.26\n\
         ; filament_diameter: 1.75\n\
         ; max_z_height: {z:.2}\n\
         ; HEADER_BLOCK_END\n\n\
         ; CONFIG_BLOCK_START\n\
         ; printer_model = Bambu Lab {name}\n\
         ; printer_model_id = {code}\n\
         ; nozzle_diameter = {nozzle}\n\
         ; curr_bed_type = {bed}\n\
         ; filament_type = {ftype}\n\
         ; filament_colour = {color}\n\
         ; CONFIG_BLOCK_END\n\n\
         ; EXECUTABLE_BLOCK_START\n\
         M73 P0 R{rem}\n\
         M201 X20000 Y20000 Z500 E5000\n\
         M140 S55\nM104 S220\nG28\nM190 S55\nM109 S220\nG90\nM83\n",
        m = secs / 60,
        s = secs % 60,
        layers = opts.layers,
        len = opts.weight_g / 1.26 / 2.405 * 1000.0,
        vol = opts.weight_g / 1.26,
        w = opts.weight_g,
        z = f64::from(opts.layers) * 0.2,
        name = opts.model.display_name(),
        code = opts.model.model_code(),
        nozzle = opts.nozzle_diameter,
        bed = opts.bed_type,
        ftype = opts.filament_type,
        color = opts.filament_color,
        rem = secs / 60,
    )
}

fn gcode_body(opts: &Fixture3mf) -> String {
    let mut s = String::new();
    let layers = opts.layers.max(1);
    for layer in 1..=layers {
        let pct = layer * 100 / layers;
        let rem = opts.prediction_secs / 60 * u64::from(layers - layer) / u64::from(layers);
        s.push_str(&format!(
            "; CHANGE_LAYER\n; Z_HEIGHT: {z:.2}\n; LAYER_HEIGHT: 0.2\nM73 L{layer}\nM991 S0 P{idx} ;notify layer change\nM73 P{pct} R{rem}\nG1 Z{z:.2} F720\n\
             ; FEATURE: Outer wall\nG1 X118 Y118 F12000\nG1 X138 Y118 E0.8\nG1 X138 Y138 E0.8\nG1 X118 Y138 E0.8\nG1 X118 Y118 E0.8\n",
            z = f64::from(layer) * 0.2,
            idx = layer - 1,
        ));
    }
    s
}

const GCODE_TAIL: &str =
    "; EXECUTABLE_BLOCK_END\nM140 S0\nM104 S0\nM106 S0\nG28 X\nM84\nM73 P100 R0\n";

/// 64 KiB of plausible travel/extrusion moves (`G1 …` lines) used as padding.
fn padding_block() -> Vec<u8> {
    let mut block = Vec::with_capacity(64 * 1024 + 64);
    let mut i: u32 = 0;
    while block.len() < 64 * 1024 {
        let line = format!(
            "G1 X{}.{} Y{}.{} E0.0{}\n",
            100 + i % 50,
            i % 10,
            100 + i % 37,
            i % 7,
            10 + i % 89
        );
        block.extend_from_slice(line.as_bytes());
        i += 1;
    }
    block.truncate(64 * 1024);
    if let Some(last) = block.last_mut() {
        *last = b'\n';
    }
    block
}

fn plate_json(opts: &Fixture3mf) -> String {
    serde_json::json!({
        "bbox_all": [108.0, 108.0, 148.0, 148.0],
        "bbox_objects": [{"area": 400.0, "bbox": [118.0, 118.0, 138.0, 138.0], "id": 120, "layer_height": 0.2, "name": "cube.stl"}],
        "bed_type": opts.bed_type,
        "filament_colors": [opts.filament_color],
        "filament_ids": [0],
        "first_extruder": 0,
        "is_seq_print": false,
        "nozzle_diameter": opts.nozzle_diameter,
        "version": 2
    })
    .to_string()
}

fn slice_info(opts: &Fixture3mf, plates: &[u32]) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config>\n  <header>\n    <header_item key=\"X-BBL-Client-Type\" value=\"slicer\"/>\n    <header_item key=\"X-BBL-Client-Version\" value=\"{SLICER_VERSION}\"/>\n  </header>\n"
    );
    let used_m = opts.weight_g / 1.26 / 2.405;
    for n in plates {
        s.push_str(&format!(
            "  <plate>\n    <metadata key=\"index\" value=\"{n}\"/>\n    <metadata key=\"extruder_type\" value=\"0\"/>\n    <metadata key=\"nozzle_volume_type\" value=\"0\"/>\n    <metadata key=\"printer_model_id\" value=\"{code}\"/>\n    <metadata key=\"nozzle_diameters\" value=\"{nozzle}\"/>\n    <metadata key=\"timelapse_type\" value=\"0\"/>\n    <metadata key=\"prediction\" value=\"{pred}\"/>\n    <metadata key=\"weight\" value=\"{w:.2}\"/>\n    <metadata key=\"outside\" value=\"false\"/>\n    <metadata key=\"support_used\" value=\"false\"/>\n    <metadata key=\"label_object_enabled\" value=\"true\"/>\n    <object identify_id=\"120\" name=\"cube.stl\" skipped=\"false\" />\n    <filament id=\"1\" tray_info_idx=\"GFA00\" type=\"{ftype}\" color=\"{color}\" used_m=\"{used_m:.2}\" used_g=\"{w:.2}\" />\n  </plate>\n",
            code = opts.model.model_code(),
            nozzle = opts.nozzle_diameter,
            pred = opts.prediction_secs,
            w = opts.weight_g,
            ftype = opts.filament_type,
            color = opts.filament_color,
        ));
    }
    s.push_str("</config>\n");
    s
}

fn model_settings(opts: &Fixture3mf, plates: &[u32]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config>\n  <object id=\"1\">\n    <metadata key=\"name\" value=\"cube.stl\"/>\n    <metadata key=\"extruder\" value=\"1\"/>\n  </object>\n",
    );
    for n in plates {
        let gcode = if opts.plate_gcode {
            format!("Metadata/plate_{n}.gcode")
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  <plate>\n    <metadata key=\"plater_id\" value=\"{n}\"/>\n    <metadata key=\"plater_name\" value=\"\"/>\n    <metadata key=\"locked\" value=\"false\"/>\n    <metadata key=\"gcode_file\" value=\"{gcode}\"/>\n    <metadata key=\"thumbnail_file\" value=\"Metadata/plate_{n}.png\"/>\n    <metadata key=\"pattern_bbox_file\" value=\"Metadata/plate_{n}.json\"/>\n    <model_instance>\n      <metadata key=\"object_id\" value=\"1\"/>\n      <metadata key=\"instance_id\" value=\"0\"/>\n      <metadata key=\"identify_id\" value=\"120\"/>\n    </model_instance>\n  </plate>\n"
        ));
    }
    s.push_str("</config>\n");
    s
}

fn project_settings(opts: &Fixture3mf) -> String {
    serde_json::json!({
        "printer_model": format!("Bambu Lab {}", opts.model.display_name()),
        "printer_settings_id": format!("Bambu Lab {} {} nozzle", opts.model.display_name(), opts.nozzle_diameter),
        "nozzle_diameter": [opts.nozzle_diameter.to_string()],
        "curr_bed_type": opts.bed_type,
        "filament_type": [opts.filament_type],
        "filament_colour": [opts.filament_color],
        "layer_height": "0.2",
        "version": SLICER_VERSION
    })
    .to_string()
}

fn color_rgb(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let byte = |i: usize| {
        h.get(i..i + 2)
            .and_then(|s| u8::from_str_radix(s, 16).ok())
            .unwrap_or(0x80)
    };
    [byte(0), byte(2), byte(4)]
}

/// A valid RGB PNG of one colour (zlib "stored" blocks, so no compressor is needed).
pub fn png_rgb(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    // Each row: filter byte 0 (none), then the pixels.
    let mut row = vec![0u8];
    for _ in 0..width {
        row.extend_from_slice(&rgb);
    }
    let raw = row.repeat(height as usize);
    let mut zlib = vec![0x78, 0x01];
    let mut chunks = raw.chunks(65_535).peekable();
    while let Some(block) = chunks.next() {
        zlib.push(u8::from(chunks.peek().is_none()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    zlib.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, no filter, no interlace
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &zlib);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// LSB-first bit writer for a raw deflate stream.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, bits: u32) {
        self.acc |= u64::from(value) << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }
    /// Huffman codes go most-significant bit first.
    fn put_code(&mut self, code: u32, len: u32) {
        let reversed = code.reverse_bits() >> (32 - len);
        self.put(reversed, len);
    }
    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A raw deflate stream (fixed Huffman) inflating to `size` zeros: one literal, then
/// length-258/distance-1 matches (13 bits per 258 bytes), then literals.
fn deflated_zeros(size: u64) -> Vec<u8> {
    let mut bits = Bits {
        out: Vec::with_capacity(usize::try_from(size / 158).unwrap_or(0)),
        acc: 0,
        n: 0,
    };
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = fixed Huffman
    let literal_zero = |bits: &mut Bits| bits.put_code(0x30, 8);
    if size > 0 {
        literal_zero(&mut bits);
    }
    let rest = size.saturating_sub(1);
    for _ in 0..rest / 258 {
        bits.put_code(0xC5, 8); // length symbol 285 = 258
        bits.put_code(0, 5); // distance code 0 = 1
    }
    for _ in 0..rest % 258 {
        literal_zero(&mut bits);
    }
    bits.put_code(0, 7); // end of block (256)
    bits.finish()
}

/// A one-entry zip (hand-written headers) whose deflated entry inflates to `real` zeros but
/// declares `declared` bytes. The CRC is not computed: a bomb must be refused long before it.
fn raw_zip_with_deflated_zeros(name: &str, real: u64, declared: u64) -> Vec<u8> {
    let data = deflated_zeros(real);
    let name = name.as_bytes();
    let csize = data.len() as u32;
    let usize_ = u32::try_from(declared).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(data.len() + 256);
    // Local file header.
    out.extend_from_slice(b"PK\x03\x04");
    out.extend_from_slice(&20u16.to_le_bytes()); // version needed
    out.extend_from_slice(&0u16.to_le_bytes()); // flags
    out.extend_from_slice(&8u16.to_le_bytes()); // deflate
    out.extend_from_slice(&0u16.to_le_bytes()); // time
    out.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
    out.extend_from_slice(&0u32.to_le_bytes()); // crc
    out.extend_from_slice(&csize.to_le_bytes());
    out.extend_from_slice(&usize_.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // extra length
    out.extend_from_slice(name);
    out.extend_from_slice(&data);
    // Central directory.
    let cd_start = out.len() as u32;
    out.extend_from_slice(b"PK\x01\x02");
    out.extend_from_slice(&20u16.to_le_bytes()); // made by
    out.extend_from_slice(&20u16.to_le_bytes()); // needed
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&8u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0x21u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&csize.to_le_bytes());
    out.extend_from_slice(&usize_.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0; 8]); // extra len, comment len, disk, internal attrs
    out.extend_from_slice(&0u32.to_le_bytes()); // external attrs
    out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
    out.extend_from_slice(name);
    let cd_len = out.len() as u32 - cd_start;
    // End of central directory.
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]); // disk numbers
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&cd_len.to_le_bytes());
    out.extend_from_slice(&cd_start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn deflated_zeros_inflate_exactly() {
        let data = raw_zip_with_deflated_zeros("a", 100_000, 100_000);
        let mut archive = zip::ZipArchive::new(Cursor::new(data)).expect("zip");
        let mut entry = archive.by_index(0).expect("entry");
        let mut out = Vec::new();
        // The CRC is deliberately 0, so the final read reports a checksum error; count bytes.
        let _ = entry.read_to_end(&mut out);
        assert_eq!(out.len(), 100_000);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn fixture_is_a_readable_zip_with_matching_md5() {
        let bytes = build_3mf(&Fixture3mf::default());
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip");
        let mut gcode = Vec::new();
        archive
            .by_name("Metadata/plate_1.gcode")
            .expect("gcode")
            .read_to_end(&mut gcode)
            .expect("read");
        let mut md5 = String::new();
        archive
            .by_name("Metadata/plate_1.gcode.md5")
            .expect("md5")
            .read_to_string(&mut md5)
            .expect("read");
        assert_eq!(md5, hex::encode_upper(Md5::digest(&gcode)));
        assert!(String::from_utf8_lossy(&gcode).contains("; total layer number: 50"));
    }

    #[test]
    fn png_crc_matches_reference() {
        // CRC-32 of "IEND" is the well-known AE426082.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }
}

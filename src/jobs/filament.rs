//! Filament vocabulary shared by the printer page and the queue: colours as slicers and printers
//! write them (`#RRGGBB`, `RRGGBBAA`), a plain-word name for a colour so that a person can
//! tell trays apart without seeing the swatch, and (see [`requirements`]) what a sliced plate
//! needs loaded. Pure: no I/O.

use crate::jobs::threemf::PlateInfo;
use serde::{Deserialize, Serialize};

/// Most filaments one plate may list (a full H2D: 4 AMS × 4 + 8 AMS HT + 2 external spools is
/// 26; Bambu Studio allows 32 per project).
pub const MAX_FILAMENTS_PER_PLATE: usize = 32;

/// One filament a sliced plate needs, from `Metadata/slice_info.config`
/// (`<filament id type color used_g used_m>`), in the order the file lists them: the order of
/// the plate's `ams_mapping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilamentRequirement {
    /// The project's filament number (`id`, 1-based in Bambu Studio's files).
    pub id: u32,
    /// Material as the slicer names it, e.g. `PLA`, `PETG-CF`.
    pub material: String,
    /// `#RRGGBB` or `#RRGGBBAA`, upper case.
    pub color: String,
    /// Grams the plate uses.
    pub used_g: Option<f64>,
    /// Metres the plate uses.
    pub used_m: Option<f64>,
}

impl FilamentRequirement {
    pub fn rgba(&self) -> Option<Rgba> {
        Rgba::parse(&self.color)
    }
    /// `PLA · white · 12.3 g`.
    pub fn describe(&self) -> String {
        let mut parts = vec![self.material.clone()];
        if let Some(c) = self.rgba() {
            parts.push(c.name().to_string());
        }
        if let Some(g) = self.used_g {
            parts.push(format!("{g:.1} g"));
        }
        parts.join(" · ")
    }
}

/// Why a plate's filament list cannot be used. The text names the plate and the filament.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error(
        "plate {plate}, filament {position} of Metadata/slice_info.config has no number (`id`)"
    )]
    NoId { plate: u32, position: usize },
    #[error("plate {plate} lists filament number {id} twice in Metadata/slice_info.config")]
    Duplicate { plate: u32, id: u32 },
    #[error("plate {plate}, filament {id} of Metadata/slice_info.config has no material (`type`)")]
    NoMaterial { plate: u32, id: u32 },
    #[error(
        "plate {plate}, filament {id} of Metadata/slice_info.config names its material {material:?}, which is not a filament type (letters, digits, spaces and - + _ . / only)"
    )]
    BadMaterial {
        plate: u32,
        id: u32,
        material: String,
    },
    #[error(
        "plate {plate}, filament {id} of Metadata/slice_info.config has the colour {color:?}, which is not a #RRGGBB colour"
    )]
    BadColor { plate: u32, id: u32, color: String },
    #[error(
        "plate {plate} lists {count} filaments in Metadata/slice_info.config; printgate reads at most {MAX_FILAMENTS_PER_PLATE}"
    )]
    TooMany { plate: u32, count: usize },
}

/// A material name a slicer writes: 1–24 characters out of letters, digits, spaces and
/// `- + _ . /` (`PLA`, `PETG-CF`, `PLA-S`, `PA6-GF`, `Sup.PLA`).
fn is_material_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= 24
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '+' | '_' | '.' | '/'))
}

/// The filaments a sliced plate needs, checked: every entry has a number (unique on the plate),
/// a material name and a `#RRGGBB` colour. A plate that lists none needs none the file says.
pub fn requirements(plate: &PlateInfo) -> Result<Vec<FilamentRequirement>, RequirementError> {
    let p = plate.index;
    if plate.filaments.len() > MAX_FILAMENTS_PER_PLATE {
        return Err(RequirementError::TooMany {
            plate: p,
            count: plate.filaments.len(),
        });
    }
    let mut out: Vec<FilamentRequirement> = Vec::with_capacity(plate.filaments.len());
    for (i, f) in plate.filaments.iter().enumerate() {
        let id = f.id.ok_or(RequirementError::NoId {
            plate: p,
            position: i + 1,
        })?;
        if out.iter().any(|r| r.id == id) {
            return Err(RequirementError::Duplicate { plate: p, id });
        }
        let material = f.material.trim();
        if material.is_empty() {
            return Err(RequirementError::NoMaterial { plate: p, id });
        }
        if !is_material_name(material) {
            return Err(RequirementError::BadMaterial {
                plate: p,
                id,
                material: material.chars().take(40).collect(),
            });
        }
        let color = Rgba::parse(&f.color).ok_or_else(|| RequirementError::BadColor {
            plate: p,
            id,
            color: f.color.chars().take(40).collect(),
        })?;
        let hex = f.color.trim().trim_start_matches('#').to_ascii_uppercase();
        out.push(FilamentRequirement {
            id,
            material: material.to_string(),
            color: if color.a == 255 && hex.len() == 8 {
                color.css()
            } else {
                format!("#{hex}")
            },
            used_g: f.used_g,
            used_m: f.used_m,
        });
    }
    Ok(out)
}

/// An opaque-or-not colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rgba {
    pub r: u8,
    pub g: u8,
    pub b: u8,
    pub a: u8,
}

impl Rgba {
    /// `#RRGGBB`, `RRGGBB`, `#RRGGBBAA` or `RRGGBBAA` (either case); anything else is `None`.
    pub fn parse(s: &str) -> Option<Rgba> {
        let hex = s.trim();
        let hex = hex.strip_prefix('#').unwrap_or(hex);
        if !hex.is_ascii() || !matches!(hex.len(), 6 | 8) {
            return None;
        }
        let byte = |i: usize| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        Some(Rgba {
            r: byte(0)?,
            g: byte(2)?,
            b: byte(4)?,
            a: if hex.len() == 8 { byte(6)? } else { 255 },
        })
    }

    /// `#RRGGBB` (for a CSS swatch).
    pub fn css(self) -> String {
        format!("#{:02X}{:02X}{:02X}", self.r, self.g, self.b)
    }

    /// The nearest plain colour word ("black", "white", "red", …); "clear" when the alpha says
    /// the filament is translucent.
    pub fn name(self) -> &'static str {
        if self.a < 0x40 {
            return "clear";
        }
        let mut best = ("black", u32::MAX);
        for (name, (r, g, b)) in NAMED {
            let d = self.distance_to(r, g, b);
            if d < best.1 {
                best = (name, d);
            }
        }
        best.0
    }

    /// Squared distance in a weighted RGB space ("redmean"), good enough to tell filament
    /// colours apart.
    pub fn distance(self, other: Rgba) -> u32 {
        self.distance_to(other.r, other.g, other.b)
    }

    fn distance_to(self, r: u8, g: u8, b: u8) -> u32 {
        let rm = (u32::from(self.r) + u32::from(r)) / 2;
        let dr = u32::from(self.r.abs_diff(r));
        let dg = u32::from(self.g.abs_diff(g));
        let db = u32::from(self.b.abs_diff(b));
        (((512 + rm) * dr * dr) >> 8) + 4 * dg * dg + (((767 - rm) * db * db) >> 8)
    }
}

/// Colour words and a typical filament of that colour.
const NAMED: [(&str, (u8, u8, u8)); 15] = [
    ("black", (0x10, 0x10, 0x10)),
    ("white", (0xF5, 0xF5, 0xF5)),
    ("grey", (0x8E, 0x90, 0x89)),
    ("red", (0xC1, 0x2E, 0x1F)),
    ("orange", (0xFF, 0x6A, 0x13)),
    ("yellow", (0xF4, 0xEE, 0x2A)),
    ("green", (0x00, 0xAE, 0x42)),
    ("dark green", (0x16, 0x4B, 0x35)),
    ("blue", (0x0A, 0x29, 0x89)),
    ("light blue", (0x56, 0xB7, 0xE6)),
    ("purple", (0x5E, 0x43, 0xB7)),
    ("lilac", (0xC0, 0x8E, 0xF5)),
    ("pink", (0xF5, 0x5A, 0x74)),
    ("brown", (0x7C, 0x4B, 0x00)),
    ("beige", (0xF7, 0xE6, 0xDE)),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::threemf::FilamentInfo;

    fn plate(filaments: Vec<FilamentInfo>) -> PlateInfo {
        PlateInfo {
            index: 2,
            model_code: Some("C12".into()),
            prediction_secs: None,
            weight_g: None,
            nozzle_diameter_mm: None,
            filaments,
            bed_type: None,
            has_thumbnail: false,
            gcode_bytes: 1,
        }
    }

    fn f(id: Option<u32>, material: &str, color: &str) -> FilamentInfo {
        FilamentInfo {
            id,
            material: material.into(),
            color: color.into(),
            used_g: Some(12.34),
            used_m: Some(4.1),
        }
    }

    #[test]
    fn requirements_are_checked_and_said_in_words() {
        let ok = requirements(&plate(vec![
            f(Some(1), "PLA", "#ffffff"),
            f(Some(3), "PETG-CF", "#AFB1AEFF"),
            f(Some(4), "PETG", "#00000000"),
        ]))
        .expect("valid");
        let got: Vec<(u32, &str, &str)> = ok
            .iter()
            .map(|r| (r.id, r.material.as_str(), r.color.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "PLA", "#FFFFFF"),
                (3, "PETG-CF", "#AFB1AE"),
                (4, "PETG", "#00000000")
            ]
        );
        assert_eq!(ok[0].describe(), "PLA · white · 12.3 g");
        assert_eq!(ok[2].describe(), "PETG · clear · 12.3 g");
        assert_eq!(requirements(&plate(vec![])), Ok(vec![]));
        let cases = [
            (
                vec![f(None, "PLA", "#FFFFFF")],
                "plate 2, filament 1 of Metadata/slice_info.config has no number (`id`)",
            ),
            (
                vec![f(Some(1), "PLA", "#FFFFFF"), f(Some(1), "PLA", "#000000")],
                "plate 2 lists filament number 1 twice",
            ),
            (
                vec![f(Some(2), " ", "#FFFFFF")],
                "plate 2, filament 2 of Metadata/slice_info.config has no material (`type`)",
            ),
            (
                vec![f(Some(2), "PLA<script>", "#FFFFFF")],
                "names its material \"PLA<script>\", which is not a filament type",
            ),
            (
                vec![f(Some(2), "PLA", "red")],
                "has the colour \"red\", which is not a #RRGGBB colour",
            ),
            (
                (0..40).map(|i| f(Some(i), "PLA", "#FFFFFF")).collect(),
                "plate 2 lists 40 filaments in Metadata/slice_info.config; printgate reads at most 32",
            ),
        ];
        for (filaments, want) in cases {
            let e = requirements(&plate(filaments)).expect_err(want);
            assert!(e.to_string().contains(want), "{e} / {want}");
        }
    }

    #[test]
    fn colours_parse_and_get_a_word() {
        let c = Rgba::parse("#FFFFFF").expect("colour");
        assert_eq!((c.css().as_str(), c.a, c.name()), ("#FFFFFF", 255, "white"));
        assert_eq!(Rgba::parse("000000FF").map(Rgba::name), Some("black"));
        assert_eq!(Rgba::parse("f72323ff").map(Rgba::name), Some("red"));
        assert_eq!(Rgba::parse("0A2989FF").map(Rgba::name), Some("blue"));
        assert_eq!(Rgba::parse("00000000").map(Rgba::name), Some("clear"));
        // Colours from the captured reports (tests/fixtures/bambu/ams/).
        assert_eq!(Rgba::parse("D357FEFF").map(Rgba::name), Some("lilac"));
        assert_eq!(Rgba::parse("FFF144FF").map(Rgba::name), Some("yellow"));
        assert_eq!(Rgba::parse("0ACC38FF").map(Rgba::name), Some("green"));
        for bad in ["", "#FFF", "GGGGGG", "#FFFFFFF", "é€ab", "#FFFFFFFFFF"] {
            assert_eq!(Rgba::parse(bad), None, "{bad:?}");
        }
    }
}

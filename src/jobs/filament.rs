//! Filament vocabulary shared by the printer page and the queue: colours as slicers and printers
//! write them (`#RRGGBB`, `RRGGBBAA`), a plain-word name for a colour so that a person can
//! tell trays apart without seeing the swatch, and (see [`requirements`]) what a sliced plate
//! needs loaded. Pure: no I/O.

use serde::{Deserialize, Serialize};

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

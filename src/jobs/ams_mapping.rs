//! Which loaded tray feeds which filament of a job: the pure rule [`map`] the dispatcher applies
//! when it decides a start (the result is committed with the start and sent as is, I6), and the
//! page applies to show what a start would use. No I/O.
//!
//! The rule:
//! - a filament may use a tray only if the tray holds a spool of the same material family
//!   ([`material_family`]: `PLA Basic` and `PLA` match, `PETG HF` and `PETG` match, `PLA-CF`
//!   and `PLA` do not); an empty tray, or a spool whose material the printer does not know, is
//!   never used;
//! - among the matching trays the nearest colour wins (pairs taken in order of colour distance,
//!   so exact colours go first); each tray feeds one filament;
//! - a printer with an AMS prints from AMS trays only; the external spool is used only when the
//!   printer has no AMS (one filament; one per nozzle on an H2D);
//! - a filament nothing matches makes the whole start [`Unmet`], and the text says what to load
//!   where; a plate needing more filaments than the printer has trays is [`Unmet`] as well.
//!
//! Wire format (docs/bambu-protocol.md §4.2; checked against Bambuddy's `start_print` in
//! `backend/app/services/bambu_mqtt.py` and `_match_filaments_to_slots` in
//! `backend/app/services/print_scheduler.py`, AGPL-3.0, only the format is taken):
//! `ams_mapping` has one entry per project filament, position = filament id − 1, value = the
//! global tray id (`unit * 4 + slot`, an AMS HT's unit id 128–135), `-1` for a filament the
//! plate does not use and for an external spool; `ams_mapping2` has the same positions as
//! `{ams_id, slot_id}`, unused = `{255, 255}`, external spool `{255, 0}` on single-nozzle
//! printers (Bambu Studio's VIRTUAL_TRAY_MAIN_ID whatever id the report gives it) and
//! `{254, 0}` left / `{255, 0}` right on an H2D. `use_ams` is `true` when any filament comes
//! from an AMS; an all-external start is `use_ams: false` and, on single-nozzle printers,
//! carries no mapping fields at all (an AMS-less P1 refuses them with 07FF_8012).

use super::filament::{FilamentRequirement, Rgba};
use crate::printer::Model;
use crate::printer::state::FilamentSlots;
use serde::{Deserialize, Serialize};

/// External spool id of the right (main) nozzle, and of the only one on single-nozzle printers.
const EXTERNAL_MAIN: u32 = 255;
/// External spool id of an H2D's left (deputy) nozzle.
const EXTERNAL_DEPUTY: u32 = 254;

/// What one filament of a job needs (from [`FilamentRequirement`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    /// The project's filament number (1-based): position `id - 1` of `ams_mapping`.
    pub id: u32,
    /// e.g. `PLA`, `PETG-CF`.
    pub material: String,
    /// `#RRGGBB` or `#RRGGBBAA`.
    pub color: String,
}

impl From<&FilamentRequirement> for Need {
    fn from(r: &FilamentRequirement) -> Self {
        Need {
            id: r.id,
            material: r.material.clone(),
            color: r.color.clone(),
        }
    }
}

impl Need {
    /// `PETG (black)`.
    pub fn describe(&self) -> String {
        match Rgba::parse(&self.color) {
            Some(c) => format!("{} ({})", self.material, c.name()),
            None => self.material.clone(),
        }
    }
}

/// A filament slot of a printer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrayRef {
    /// Slot `slot` (0-based) of AMS unit `unit` (0–3; AMS HT 128–135, slot 0).
    Ams { unit: u32, slot: u32 },
    /// An external spool holder: 254 / 255 as the printer reports it.
    External { id: u32 },
}

impl TrayRef {
    /// `AMS 1 slot 2`, `AMS HT 1`, `external spool`, `left external spool` (H2D).
    pub fn label(self, model: Model) -> String {
        match self {
            TrayRef::Ams { unit, .. } if (128..=135).contains(&unit) => {
                format!("AMS HT {}", unit - 127)
            }
            TrayRef::Ams { unit, slot } => format!("AMS {} slot {}", unit + 1, slot + 1),
            TrayRef::External { id } if model == Model::H2D => {
                if id == EXTERNAL_DEPUTY {
                    "left external spool".into()
                } else {
                    "right external spool".into()
                }
            }
            TrayRef::External { .. } => "external spool".into(),
        }
    }

    /// The value in the flat `ams_mapping`: the global tray id, `-1` for an external spool.
    pub fn flat_id(self) -> i64 {
        match self {
            TrayRef::Ams { unit, .. } if (128..=135).contains(&unit) => i64::from(unit),
            TrayRef::Ams { unit, slot } => i64::from(unit * 4 + slot),
            TrayRef::External { .. } => -1,
        }
    }

    /// `(ams_id, slot_id)` of `ams_mapping2`.
    pub fn pair(self, model: Model) -> (u32, u32) {
        match self {
            TrayRef::Ams { unit, slot } => (unit, slot),
            TrayRef::External { id } if model == Model::H2D && id == EXTERNAL_DEPUTY => {
                (EXTERNAL_DEPUTY, 0)
            }
            TrayRef::External { .. } => (EXTERNAL_MAIN, 0),
        }
    }

    fn is_ams(self) -> bool {
        matches!(self, TrayRef::Ams { .. })
    }
}

/// One slot as the last report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotSeen {
    pub tray: TrayRef,
    /// A spool is in the slot.
    pub loaded: bool,
    /// `tray_type` of a loaded spool, if the printer knows it.
    pub material: Option<String>,
    /// `RRGGBBAA`.
    pub color: Option<String>,
}

/// The filament slots of one printer, as [`map`] needs them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Trays {
    /// The printer reports at least one AMS unit.
    pub has_ams: bool,
    /// AMS trays in report order, then the external spools.
    pub slots: Vec<SlotSeen>,
}

impl Trays {
    pub fn from_slots(f: &FilamentSlots) -> Trays {
        let slots = f
            .trays()
            .filter_map(|t| {
                let tray = match t.unit {
                    // A unit whose numbering is unknown cannot be named in a mapping.
                    Some(unit) => {
                        t.mapping_id?;
                        TrayRef::Ams { unit, slot: t.slot }
                    }
                    None => TrayRef::External { id: t.slot },
                };
                Some(SlotSeen {
                    tray,
                    loaded: t.loaded,
                    material: t.material.clone(),
                    color: t.color.clone(),
                })
            })
            .collect();
        Trays {
            has_ams: !f.units.is_empty(),
            slots,
        }
    }

    fn slot(&self, tray: TrayRef) -> Option<&SlotSeen> {
        self.slots.iter().find(|s| s.tray == tray)
    }
}

/// One filament and the tray chosen for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Filament number (1-based).
    pub filament: u32,
    /// What the file asks for (`PETG (black)`).
    pub need: String,
    /// The material family the tray held when the mapping was made.
    pub family: String,
    pub tray: TrayRef,
    /// How the tray was described when the mapping was made (`AMS 1 slot 4: PETG (blue)`).
    pub tray_text: String,
}

/// The trays a start uses: exactly what is sent as `use_ams` / `ams_mapping` / `ams_mapping2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub model: Model,
    pub use_ams: bool,
    /// In filament order.
    pub assignments: Vec<Assignment>,
}

impl Mapping {
    /// Whether `project_file` carries `ams_mapping` / `ams_mapping2`: with the AMS, and on an
    /// H2D also for external spools (it needs `ams_mapping2` to pick the nozzle); never on a
    /// single-nozzle printer printing from its external spool.
    pub fn sends_mapping_fields(&self) -> bool {
        self.use_ams || (self.model == Model::H2D && !self.assignments.is_empty())
    }

    fn width(&self) -> usize {
        self.assignments
            .iter()
            .map(|a| a.filament as usize)
            .max()
            .unwrap_or(0)
    }

    /// The flat `ams_mapping` (position = filament id − 1).
    pub fn ams_mapping(&self) -> Vec<i64> {
        let mut out = vec![-1; self.width()];
        for a in &self.assignments {
            if let Some(e) = (a.filament as usize)
                .checked_sub(1)
                .and_then(|i| out.get_mut(i))
            {
                *e = a.tray.flat_id();
            }
        }
        out
    }

    /// `ams_mapping2` as `(ams_id, slot_id)` pairs (position = filament id − 1).
    pub fn ams_mapping2(&self) -> Vec<(u32, u32)> {
        let mut out = vec![(255, 255); self.width()];
        for a in &self.assignments {
            if let Some(e) = (a.filament as usize)
                .checked_sub(1)
                .and_then(|i| out.get_mut(i))
            {
                *e = a.tray.pair(self.model);
            }
        }
        out
    }

    /// `filament 1 PLA (white) → AMS 1 slot 1: PLA (white)`, one per filament.
    pub fn lines(&self) -> Vec<String> {
        self.assignments
            .iter()
            .map(|a| format!("filament {} {} → {}", a.filament, a.need, a.tray_text))
            .collect()
    }

    /// One line for a page or a log.
    pub fn describe(&self) -> String {
        self.lines().join("; ")
    }

    /// Why this mapping no longer fits the trays now loaded (a tray emptied or now holding
    /// another material), or `None` when every tray still holds the material it was chosen
    /// for.
    pub fn changed_since(&self, trays: &Trays) -> Option<String> {
        let changed: Vec<String> = self
            .assignments
            .iter()
            .filter(|a| {
                trays.slot(a.tray).is_none_or(|s| {
                    !s.loaded
                        || s.material.as_deref().map(material_family) != Some(a.family.clone())
                })
            })
            .map(|a| format!("{} no longer holds {}", a.tray.label(self.model), a.family))
            .collect();
        (!changed.is_empty()).then(|| changed.join("; "))
    }
}

/// Why a job cannot start with the filament loaded: what to load where, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", .steps.join("; "))]
pub struct Unmet {
    /// One instruction per missing filament (`load PETG (black) in any AMS slot`), or one
    /// sentence when the printer cannot hold this many filaments at all.
    pub steps: Vec<String>,
}

/// The family a material name belongs to, for matching: upper case, the first word, a leading
/// `Generic` / `Bambu` dropped (`PLA Basic` → `PLA`, `PETG HF` → `PETG`, `Generic PETG` →
/// `PETG`, `PLA-CF` → `PLA-CF`).
pub fn material_family(material: &str) -> String {
    let upper = material.trim().to_ascii_uppercase();
    let mut words = upper
        .split_whitespace()
        .filter(|w| !matches!(*w, "GENERIC" | "BAMBU"));
    words.next().unwrap_or_default().to_string()
}

fn tray_text(slot: &SlotSeen, model: Model) -> String {
    let what = match (&slot.material, slot.color.as_deref().and_then(Rgba::parse)) {
        (Some(m), Some(c)) => format!("{m} ({})", c.name()),
        (Some(m), None) => m.clone(),
        (None, _) => "a spool of unknown material".into(),
    };
    format!("{}: {what}", slot.tray.label(model))
}

/// Map every need to a loaded tray (see the module documentation for the rule).
pub fn map(needs: &[Need], trays: &Trays, model: Model) -> Result<Mapping, Unmet> {
    // Where filament may come from: AMS trays when there is an AMS, else the external spools.
    let places: Vec<&SlotSeen> = trays
        .slots
        .iter()
        .filter(|s| s.tray.is_ams() == trays.has_ams)
        .collect();
    if needs.len() > places.len() {
        let holder = if trays.has_ams {
            format!("{} AMS trays", places.len())
        } else if places.len() == 1 {
            "one external spool holder and no AMS".to_string()
        } else {
            format!("{} external spool holders and no AMS", places.len())
        };
        return Err(Unmet {
            steps: vec![format!(
                "this plate needs {} filaments and the printer has {holder}: connect an AMS with enough trays or slice the plate for fewer filaments",
                needs.len()
            )],
        });
    }
    // Every (need, tray) pair whose materials match, nearest colour first.
    let mut pairs: Vec<(u32, usize, usize)> = Vec::new();
    for (n, need) in needs.iter().enumerate() {
        let family = material_family(&need.material);
        let want = Rgba::parse(&need.color);
        for (t, slot) in places.iter().enumerate() {
            let Some(material) = slot.material.as_deref().filter(|_| slot.loaded) else {
                continue;
            };
            if material_family(material) != family || family.is_empty() {
                continue;
            }
            let have = slot.color.as_deref().and_then(Rgba::parse);
            let distance = match (want, have) {
                (Some(w), Some(h)) => w.distance(h),
                _ => u32::MAX / 2,
            };
            pairs.push((distance, n, t));
        }
    }
    pairs.sort();
    let mut chosen: Vec<Option<usize>> = vec![None; needs.len()];
    let mut used = vec![false; places.len()];
    for (_, n, t) in pairs {
        if chosen[n].is_none() && !used[t] {
            chosen[n] = Some(t);
            used[t] = true;
        }
    }
    let empty_places = places.iter().filter(|s| !s.loaded).count();
    let steps: Vec<String> = needs
        .iter()
        .zip(&chosen)
        .filter(|(_, c)| c.is_none())
        .map(|(need, _)| {
            let what = need.describe();
            if !trays.has_ams {
                if places.len() > 1 {
                    format!("load {what} on the left or right external spool holder")
                } else {
                    format!("load {what} on the external spool holder")
                }
            } else if empty_places == 0 {
                format!(
                    "load {what} in any AMS slot (all are full: take out a spool this job does not use)"
                )
            } else {
                format!("load {what} in any AMS slot")
            }
        })
        .collect();
    if !steps.is_empty() {
        return Err(Unmet { steps });
    }
    let mut assignments: Vec<Assignment> = needs
        .iter()
        .zip(chosen)
        .filter_map(|(need, c)| {
            let slot = places.get(c?)?;
            Some(Assignment {
                filament: need.id,
                need: need.describe(),
                family: material_family(&need.material),
                tray: slot.tray,
                tray_text: tray_text(slot, model),
            })
        })
        .collect();
    assignments.sort_by_key(|a| a.filament);
    Ok(Mapping {
        model,
        use_ams: assignments.iter().any(|a| a.tray.is_ams()),
        assignments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(id: u32, material: &str, color: &str) -> Need {
        Need {
            id,
            material: material.into(),
            color: color.into(),
        }
    }

    fn ams(slot: u32, spool: Option<(&str, &str)>) -> SlotSeen {
        SlotSeen {
            tray: TrayRef::Ams { unit: 0, slot },
            loaded: spool.is_some(),
            material: spool.map(|s| s.0.to_string()),
            color: spool.map(|s| s.1.to_string()),
        }
    }

    fn external(id: u32, spool: Option<(&str, &str)>) -> SlotSeen {
        SlotSeen {
            tray: TrayRef::External { id },
            ..ams(0, spool)
        }
    }

    /// The simulator's default AMS (white, black, red PLA; blue PETG) and a white PLA
    /// external spool.
    fn sim_trays() -> Trays {
        Trays {
            has_ams: true,
            slots: vec![
                ams(0, Some(("PLA", "FFFFFFFF"))),
                ams(1, Some(("PLA", "000000FF"))),
                ams(2, Some(("PLA", "C12E1FFF"))),
                ams(3, Some(("PETG", "0A2989FF"))),
                external(254, Some(("PLA", "FFFFFFFF"))),
            ],
        }
    }

    fn trays_of(m: &Mapping) -> Vec<(u32, TrayRef)> {
        m.assignments.iter().map(|a| (a.filament, a.tray)).collect()
    }

    #[test]
    fn exact_match_uses_that_tray() {
        let m = map(&[need(1, "PETG", "#0A2989")], &sim_trays(), Model::P1S).expect("mapped");
        assert_eq!(trays_of(&m), [(1, TrayRef::Ams { unit: 0, slot: 3 })]);
        assert!(m.use_ams && m.sends_mapping_fields());
        assert_eq!(m.ams_mapping(), [3]);
        assert_eq!(m.ams_mapping2(), [(0, 3)]);
        assert_eq!(
            m.describe(),
            "filament 1 PETG (blue) → AMS 1 slot 4: PETG (blue)"
        );
    }

    #[test]
    fn material_names_are_normalised() {
        assert_eq!(material_family("PLA Basic"), "PLA");
        assert_eq!(material_family(" pla "), "PLA");
        assert_eq!(material_family("PETG HF"), "PETG");
        assert_eq!(material_family("Generic PETG"), "PETG");
        assert_eq!(material_family("PLA-CF"), "PLA-CF");
        let trays = Trays {
            has_ams: true,
            slots: vec![
                ams(0, Some(("PLA-CF", "000000FF"))),
                ams(1, Some(("PLA Basic", "FFFFFFFF"))),
            ],
        };
        let m = map(&[need(1, "PLA", "#000000")], &trays, Model::X1C).expect("mapped");
        assert_eq!(
            trays_of(&m),
            [(1, TrayRef::Ams { unit: 0, slot: 1 })],
            "PLA-CF is not PLA, however close the colour"
        );
    }

    #[test]
    fn nearest_colour_wins_and_each_tray_feeds_one_filament() {
        // Dark grey wants black; white wants white; a second white gets the red (the only PLA
        // left) rather than sharing a tray.
        let needs = [
            need(1, "PLA", "#FFFFFF"),
            need(2, "PLA", "#202020"),
            need(3, "PLA", "#FAFAFA"),
        ];
        let m = map(&needs, &sim_trays(), Model::P1S).expect("mapped");
        assert_eq!(
            trays_of(&m),
            [
                (1, TrayRef::Ams { unit: 0, slot: 0 }),
                (2, TrayRef::Ams { unit: 0, slot: 1 }),
                (3, TrayRef::Ams { unit: 0, slot: 2 }),
            ]
        );
        // The exact colour goes first even when listed second.
        let needs = [need(1, "PLA", "#F0F0F0"), need(2, "PLA", "#FFFFFF")];
        let trays = Trays {
            has_ams: true,
            slots: vec![
                ams(0, Some(("PLA", "FFFFFFFF"))),
                ams(1, Some(("PLA", "E0E0E0FF"))),
            ],
        };
        let m = map(&needs, &trays, Model::P1S).expect("mapped");
        assert_eq!(
            trays_of(&m),
            [
                (1, TrayRef::Ams { unit: 0, slot: 1 }),
                (2, TrayRef::Ams { unit: 0, slot: 0 }),
            ]
        );
    }

    #[test]
    fn missing_material_says_what_to_load_where() {
        let trays = Trays {
            has_ams: true,
            slots: vec![
                ams(0, Some(("PLA", "FFFFFFFF"))),
                ams(1, None),
                ams(2, Some(("PLA", "000000FF"))),
                ams(3, None),
                // An external PETG spool is not used while the printer has an AMS.
                external(254, Some(("PETG", "000000FF"))),
            ],
        };
        let e = map(&[need(1, "PETG", "#000000")], &trays, Model::P1S).expect_err("no PETG");
        assert_eq!(e.to_string(), "load PETG (black) in any AMS slot");
        // Never an empty tray, never a spool of unknown material.
        let trays = Trays {
            has_ams: true,
            slots: vec![
                SlotSeen {
                    material: Some("PLA".into()),
                    loaded: false,
                    ..ams(0, None)
                },
                SlotSeen {
                    loaded: true,
                    ..ams(1, None)
                },
                ams(2, Some(("PETG", "FFFFFFFF"))),
                ams(3, Some(("PETG", "FFFFFFFF"))),
            ],
        };
        let e = map(
            &[need(1, "PLA", "#FFFFFF"), need(2, "PETG", "#FFFFFF")],
            &trays,
            Model::X1C,
        )
        .expect_err("no loaded PLA");
        assert_eq!(
            e.steps,
            ["load PLA (white) in any AMS slot"],
            "slot 1 is empty (a stale tray_type does not make it loaded)"
        );
    }

    #[test]
    fn more_filaments_than_trays_is_unmet() {
        let needs: Vec<Need> = (1..=5).map(|i| need(i, "PLA", "#FFFFFF")).collect();
        let e = map(&needs, &sim_trays(), Model::P1S).expect_err("5 > 4");
        assert_eq!(
            e.to_string(),
            "this plate needs 5 filaments and the printer has 4 AMS trays: connect an AMS with enough trays or slice the plate for fewer filaments"
        );
        // Two PETG filaments with one PETG tray: the second is named.
        let e = map(
            &[need(1, "PETG", "#0A2989"), need(2, "PETG", "#FFFFFF")],
            &sim_trays(),
            Model::P1S,
        )
        .expect_err("one PETG tray");
        assert_eq!(
            e.steps,
            [
                "load PETG (white) in any AMS slot (all are full: take out a spool this job does not use)"
            ]
        );
    }

    #[test]
    fn external_spool_only_without_an_ams() {
        let no_ams = Trays {
            has_ams: false,
            slots: vec![external(254, Some(("PLA", "FFFFFFFF")))],
        };
        let m = map(&[need(1, "PLA", "#00AE42")], &no_ams, Model::P1P).expect("external");
        assert_eq!(trays_of(&m), [(1, TrayRef::External { id: 254 })]);
        assert!(!m.use_ams);
        assert!(
            !m.sends_mapping_fields(),
            "an AMS-less P1 gets no mapping fields"
        );
        assert_eq!(
            m.describe(),
            "filament 1 PLA (green) → external spool: PLA (white)"
        );
        let e = map(&[need(1, "PETG", "#000000")], &no_ams, Model::P1P).expect_err("PLA only");
        assert_eq!(
            e.to_string(),
            "load PETG (black) on the external spool holder"
        );
        let e = map(
            &[need(1, "PLA", "#FFFFFF"), need(2, "PLA", "#000000")],
            &no_ams,
            Model::P1P,
        )
        .expect_err("two filaments, one holder");
        assert!(e.to_string().starts_with(
            "this plate needs 2 filaments and the printer has one external spool holder and no AMS"
        ));
        let empty = Trays {
            has_ams: false,
            slots: vec![external(254, None)],
        };
        assert_eq!(
            map(&[need(1, "PLA", "#FFFFFF")], &empty, Model::A1Mini)
                .expect_err("nothing loaded")
                .to_string(),
            "load PLA (white) on the external spool holder"
        );
    }

    #[test]
    fn h2d_two_nozzles_use_ams_mapping2() {
        // H2D with AMS unit 0 and an AMS HT (128), plus the two external spools.
        let trays = Trays {
            has_ams: true,
            slots: vec![
                SlotSeen {
                    tray: TrayRef::Ams { unit: 0, slot: 2 },
                    ..ams(0, Some(("PLA", "000000FF")))
                },
                SlotSeen {
                    tray: TrayRef::Ams { unit: 128, slot: 0 },
                    ..ams(0, Some(("PETG", "FFFFFFFF")))
                },
                external(254, Some(("TPU", "000000FF"))),
                external(255, Some(("TPU", "FFFFFFFF"))),
            ],
        };
        let needs = [need(1, "PETG", "#FFFFFF"), need(3, "PLA", "#000000")];
        let m = map(&needs, &trays, Model::H2D).expect("mapped");
        assert!(m.use_ams);
        assert_eq!(m.ams_mapping(), [128, -1, 2], "filament 2 unused: -1");
        assert_eq!(m.ams_mapping2(), [(128, 0), (255, 255), (0, 2)]);
        assert_eq!(
            m.lines(),
            [
                "filament 1 PETG (white) → AMS HT 1: PETG (white)",
                "filament 3 PLA (black) → AMS 1 slot 3: PLA (black)"
            ]
        );
        // Without an AMS each nozzle's external spool may feed one filament: left 254, right 255.
        let ext = Trays {
            has_ams: false,
            slots: vec![
                external(254, Some(("TPU", "000000FF"))),
                external(255, Some(("TPU", "FFFFFFFF"))),
            ],
        };
        let m = map(
            &[need(1, "TPU", "#FFFFFF"), need(2, "TPU", "#000000")],
            &ext,
            Model::H2D,
        )
        .expect("both external");
        assert!(!m.use_ams);
        assert!(
            m.sends_mapping_fields(),
            "an H2D needs ams_mapping2 to pick the nozzle"
        );
        assert_eq!(m.ams_mapping(), [-1, -1]);
        assert_eq!(m.ams_mapping2(), [(255, 0), (254, 0)]);
        assert_eq!(
            m.lines(),
            [
                "filament 1 TPU (white) → right external spool: TPU (white)",
                "filament 2 TPU (black) → left external spool: TPU (black)"
            ]
        );
        let e = map(&[need(1, "PLA", "#FFFFFF")], &ext, Model::H2D).expect_err("TPU only");
        assert_eq!(
            e.to_string(),
            "load PLA (white) on the left or right external spool holder"
        );
    }

    #[test]
    fn single_nozzle_external_spool_is_ams_id_255() {
        // A P1S reports its external spool as 254, Bambu Studio sends {255, 0} (see the module
        // documentation); the flat mapping holds -1.
        assert_eq!(TrayRef::External { id: 254 }.pair(Model::P1S), (255, 0));
        assert_eq!(TrayRef::External { id: 254 }.flat_id(), -1);
        assert_eq!(TrayRef::External { id: 254 }.pair(Model::H2D), (254, 0));
        assert_eq!(TrayRef::Ams { unit: 1, slot: 2 }.flat_id(), 6);
        assert_eq!(TrayRef::Ams { unit: 1, slot: 2 }.pair(Model::X1C), (1, 2));
    }

    #[test]
    fn a_mapping_notices_when_its_tray_changed() {
        let m = map(&[need(1, "PETG", "#0A2989")], &sim_trays(), Model::P1S).expect("mapped");
        assert_eq!(m.changed_since(&sim_trays()), None);
        let mut swapped = sim_trays();
        swapped.slots[3] = ams(3, Some(("PETG HF", "FFFFFFFF")));
        assert_eq!(m.changed_since(&swapped), None, "same family, other colour");
        swapped.slots[3] = ams(3, Some(("PLA", "0A2989FF")));
        assert_eq!(
            m.changed_since(&swapped).as_deref(),
            Some("AMS 1 slot 4 no longer holds PETG")
        );
        swapped.slots[3] = ams(3, None);
        assert!(m.changed_since(&swapped).is_some());
    }

    #[test]
    fn reads_the_trays_of_a_report() {
        use crate::printer::bambu::ams::filament_slots;
        let report: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/bambu/ams/X1C-3AMS-1AMSHT.json"
        ))
        .expect("fixture");
        let print = report.get("print").unwrap_or(&report);
        let slots = filament_slots(print, Model::X1C).expect("slots");
        let trays = Trays::from_slots(&slots);
        assert!(trays.has_ams);
        assert!(
            trays
                .slots
                .iter()
                .any(|s| matches!(s.tray, TrayRef::Ams { unit: 128, .. }))
        );
        assert!(
            trays
                .slots
                .iter()
                .any(|s| matches!(s.tray, TrayRef::External { .. }))
        );
    }
}

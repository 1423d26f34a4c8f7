//! The number formats of a printer card (`templates/card_body.html`): every page that includes
//! the card implements [`CardText`].

/// The number formats a printer card's template uses (`card_body.html`): every page that includes
/// the card implements this.
pub trait CardText {
    fn fmt_temp(&self, t: &Option<f64>) -> String {
        fmt_temp(*t)
    }
    fn fmt_minutes(&self, m: &Option<u32>) -> String {
        fmt_minutes(*m)
    }
}

/// `12.5` → `"12.5"`, `None` → `"–"`.
pub fn fmt_temp(t: Option<f64>) -> String {
    t.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

/// Minutes → `1 h 05 min`.
pub fn fmt_minutes(m: Option<u32>) -> String {
    match m {
        None => "–".into(),
        Some(m) if m >= 60 => format!("{} h {:02} min", m / 60, m % 60),
        Some(m) => format!("{m} min"),
    }
}

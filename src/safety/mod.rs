//! Safety: GPIO smoke input and relay outputs, thermal watchdog, latched trips.

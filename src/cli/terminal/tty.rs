//! The local terminal of `citadel terminal`: whether stdin is one, its window size, raw mode
//! (every key goes to the remote shell as typed) restored when the guard drops, and the detach
//! key. Through rustix's termios (no unsafe code); it must never leave the terminal raw.

use std::io::IsTerminal as _;

use anyhow::{bail, Context as _};
use rustix::termios::{tcgetattr, tcgetwinsize, tcsetattr, OptionalActions, Termios};

/// Whether stdin is a terminal (interactive use) rather than a pipe or a file.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// The local window's size (columns, rows), if stdin or stdout is a terminal that knows it.
pub fn window_size() -> Option<(u16, u16)> {
    let of = |ws: rustix::termios::Winsize| {
        (ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    };
    tcgetwinsize(std::io::stdin())
        .ok()
        .and_then(of)
        .or_else(|| tcgetwinsize(std::io::stdout()).ok().and_then(of))
}

/// Raw mode on stdin until dropped (then the settings it found are put back).
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(&stdin, OptionalActions::Now, &raw)
            .context("switching the terminal to raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved) {
            eprintln!("citadel: could not restore the terminal's settings ({e}); run `reset`");
        }
    }
}

/// The detach key: `ctrl-]` (the default), `ctrl-X` for a letter or one of `@[\]^_`, `^X`
/// alike, or `none`. Returns the byte it sends, or `None` for no detach key.
pub fn parse_detach_key(s: &str) -> anyhow::Result<Option<u8>> {
    let t = s.trim().to_ascii_lowercase();
    if t == "none" {
        return Ok(None);
    }
    let key = t
        .strip_prefix("ctrl-")
        .or_else(|| t.strip_prefix("ctrl+"))
        .or_else(|| t.strip_prefix('^'));
    match key.map(str::as_bytes) {
        Some([c @ b'a'..=b'z']) => Ok(Some(c - b'a' + 1)),
        Some([c @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_')]) => Ok(Some(c & 0x1f)),
        _ => bail!("the detach key must be ctrl-LETTER, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_ or none, not `{s}`"),
    }
}

/// How a detach key reads on screen: `^]`.
pub fn show_key(b: u8) -> String {
    format!("^{}", (b | 0x40) as char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_to_their_control_byte() {
        assert_eq!(parse_detach_key("ctrl-]").unwrap(), Some(0x1d));
        assert_eq!(parse_detach_key("Ctrl-A").unwrap(), Some(0x01));
        assert_eq!(parse_detach_key("^]").unwrap(), Some(0x1d));
        assert_eq!(parse_detach_key("ctrl-\\").unwrap(), Some(0x1c));
        assert_eq!(parse_detach_key("ctrl-@").unwrap(), Some(0x00));
        assert_eq!(parse_detach_key("none").unwrap(), None);
        for bad in ["", "]", "ctrl-", "ctrl-ab", "ctrl-1", "alt-x"] {
            assert!(parse_detach_key(bad).is_err(), "{bad}");
        }
        assert_eq!(show_key(0x1d), "^]");
        assert_eq!(show_key(0x01), "^A");
    }
}

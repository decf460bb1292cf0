//! The terminal's WebSocket frames: JSON text objects `{"type","payload"?,"cols"?,"rows"?,
//! "error"?}` with base64 payloads. The client sends `input`, `resize` and `ping`; the server
//! sends `output`, `pong` and `error`. This module only encodes and decodes; it must never touch
//! a PTY or a socket.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The error text of a frame whose `type` is not one the client may send.
pub const INVALID_TYPE: &str = "invalid message type";

/// A frame as it travels, every field but `type` optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Frame {
    fn of(kind: &str) -> Self {
        Self {
            kind: kind.into(),
            ..Self::default()
        }
    }

    /// Client → server: bytes typed.
    pub fn input(bytes: &[u8]) -> Self {
        Self {
            payload: Some(STANDARD.encode(bytes)),
            ..Self::of("input")
        }
    }

    /// Client → server: the window's new size.
    pub fn resize(cols: u16, rows: u16) -> Self {
        Self {
            cols: Some(cols),
            rows: Some(rows),
            ..Self::of("resize")
        }
    }

    pub fn ping() -> Self {
        Self::of("ping")
    }

    pub fn pong() -> Self {
        Self::of("pong")
    }

    /// Server → client: bytes the PTY produced (raw bytes, so a split UTF-8 character survives).
    pub fn output(bytes: &[u8]) -> Self {
        Self {
            payload: Some(STANDARD.encode(bytes)),
            ..Self::of("output")
        }
    }

    pub fn error(message: &str) -> Self {
        Self {
            error: Some(message.into()),
            ..Self::of("error")
        }
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a frame always encodes")
    }

    /// The decoded payload, if there is one and it is base64.
    pub fn payload_bytes(&self) -> Option<Vec<u8>> {
        self.payload.as_ref().and_then(|p| STANDARD.decode(p).ok())
    }
}

/// What a client frame asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Input(Vec<u8>),
    Resize { cols: u16, rows: u16 },
    Ping,
}

/// Decodes a client frame; the error is the text of the `error` frame to answer with.
pub fn parse_client(text: &str) -> Result<Request, String> {
    let frame: Frame = serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))?;
    match frame.kind.as_str() {
        "input" => frame
            .payload_bytes()
            .map(Request::Input)
            .ok_or_else(|| "input needs a base64 payload".to_string()),
        "resize" => match (frame.cols, frame.rows) {
            (Some(cols), Some(rows)) if cols > 0 && rows > 0 => Ok(Request::Resize { cols, rows }),
            _ => Err("resize needs cols and rows above 0".to_string()),
        },
        "ping" => Ok(Request::Ping),
        _ => Err(INVALID_TYPE.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_decode_and_bad_ones_say_why() {
        let input = Frame::input(b"ls\n").to_text();
        assert_eq!(parse_client(&input), Ok(Request::Input(b"ls\n".to_vec())));
        assert_eq!(
            parse_client(r#"{"type":"resize","cols":132,"rows":50}"#),
            Ok(Request::Resize {
                cols: 132,
                rows: 50
            })
        );
        assert_eq!(parse_client(r#"{"type":"ping"}"#), Ok(Request::Ping));
        assert_eq!(
            parse_client(r#"{"type":"shutdown"}"#).unwrap_err(),
            INVALID_TYPE
        );
        assert!(parse_client(r#"{"type":"resize","cols":0,"rows":5}"#).is_err());
        assert!(parse_client(r#"{"type":"input","payload":"%%%"}"#).is_err());
        assert!(parse_client("not json").is_err());
        assert_eq!(Frame::pong().to_text(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn output_carries_any_bytes() {
        let bytes = [0xf0, 0x9f, 0x98]; // the first three bytes of a 4-byte emoji
        assert_eq!(Frame::output(&bytes).payload_bytes().unwrap(), bytes);
    }
}

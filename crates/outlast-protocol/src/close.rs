//! WebSocket close codes the gateway sends, one variant per code, as listed in
//! `docs/protocol.md` ("Errors and close codes").

/// A close code of the job and upload WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the client closed, or the server ends a healthy session.
    Normal,
    /// 1002: a frame-level WebSocket protocol violation.
    ProtocolError,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidPayload,
    /// 1009: a frame or message over `max_message_bytes`.
    MessageTooBig,
    /// 1012: the gateway is restarting or shutting down (after `goaway`); reconnect and resume.
    ServiceRestart,
    /// 4000: the client answered no ping within `pong_timeout`.
    PingTimeout,
    /// 4001: the connection's credential expired without a `refresh`; get a new token (or
    /// ticket) and reconnect.
    AuthExpired,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 7] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::ServiceRestart,
        CloseCode::PingTimeout,
        CloseCode::AuthExpired,
    ];

    /// The number in the close frame.
    pub const fn as_u16(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::MessageTooBig => 1009,
            CloseCode::ServiceRestart => 1012,
            CloseCode::PingTimeout => 4000,
            CloseCode::AuthExpired => 4001,
        }
    }

    /// The code for a number, when it is one of ours.
    pub fn from_u16(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.as_u16() == code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_table() {
        let table: &[(CloseCode, u16)] = &[
            (CloseCode::Normal, 1000),
            (CloseCode::ProtocolError, 1002),
            (CloseCode::InvalidPayload, 1007),
            (CloseCode::MessageTooBig, 1009),
            (CloseCode::ServiceRestart, 1012),
            (CloseCode::PingTimeout, 4000),
            (CloseCode::AuthExpired, 4001),
        ];
        assert_eq!(table.len(), CloseCode::ALL.len());
        for (code, n) in table {
            assert_eq!(code.as_u16(), *n, "{code:?}");
            assert_eq!(CloseCode::from_u16(*n), Some(*code), "{n}");
        }
        for unknown in [0, 999, 1001, 1011, 3000, 4002] {
            assert_eq!(CloseCode::from_u16(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn protocol_doc_lists_exactly_these_codes() {
        let doc = include_str!("../../../docs/protocol.md");
        let listed: Vec<u16> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(" |").next())
            .filter_map(|n| n.trim().parse::<u16>().ok())
            .filter(|n| (1000..5000).contains(n))
            .collect();
        let ours: Vec<u16> = CloseCode::ALL.iter().map(|c| c.as_u16()).collect();
        assert_eq!(listed, ours);
    }
}

//! ICMP echo messages for `Mesh::ping`: the request the ping socket sends and the reply it reads.
//! smoltcp answers echo requests on the interface itself, so every node answers pings.

use crate::stack::PING_IDENT;

/// An echo request (type 8) with this node's identifier and `seq`, checksummed.
pub(crate) fn echo_request(seq: u16) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&PING_IDENT.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(b"citadel-mesh-ping");
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The sequence number of an echo reply (type 0) to one of this node's requests.
pub(crate) fn echo_reply_seq(m: &[u8]) -> Option<u16> {
    (m.len() >= 8 && m[0] == 0 && m[4..6] == PING_IDENT.to_be_bytes())
        .then(|| u16::from_be_bytes([m[6], m[7]]))
}

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checksums_to_zero_and_a_reply_yields_its_seq() {
        let m = echo_request(7);
        assert_eq!(checksum(&m), 0);
        let mut reply = m.clone();
        reply[0] = 0;
        assert_eq!(echo_reply_seq(&reply), Some(7));
        assert_eq!(echo_reply_seq(&m), None);
    }
}

//! Stapled OCSP responses (RFC 6960) as files: reads one and finds until
//! when it may be stapled. Only the structure is walked (yasna, the DER
//! reader rcgen already brings): the response must be `successful` and of
//! the basic type, and its validity ends at the earliest `nextUpdate` of its
//! single responses (none: it does not expire, as in nginx). The signature
//! and which certificate it speaks for are the client's to verify, as with
//! every stapled response.

use std::time::{Duration, SystemTime};

use yasna::models::ObjectIdentifier;
use yasna::Tag;

/// id-pkix-ocsp-basic (RFC 6960 §4.2.1).
const OCSP_BASIC: [u64; 10] = [1, 3, 6, 1, 5, 5, 7, 48, 1, 1];

/// Why a file is not a stapleable OCSP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OcspError {
    #[error("not a DER OCSP response")]
    Malformed,
    #[error("the responder answered {0} instead of successful")]
    Status(&'static str),
    #[error("not a basic OCSP response")]
    NotBasic,
    #[error("the response holds no single response")]
    Empty,
}

/// A parsed response: its bytes as stapled and until when it is fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspResponse {
    pub der: Vec<u8>,
    /// The earliest `nextUpdate`; `None`: no end given.
    pub next_update: Option<SystemTime>,
}

impl OcspResponse {
    pub fn parse(der: Vec<u8>) -> Result<Self, OcspError> {
        let next_update = next_update(&der)?;
        Ok(Self { der, next_update })
    }

    /// Still fresh at `now`?
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.next_update.is_none_or(|t| now < t)
    }
}

fn status_name(s: i64) -> &'static str {
    match s {
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "an unknown status",
    }
}

/// The earliest `nextUpdate` in a DER `OCSPResponse`.
fn next_update(der: &[u8]) -> Result<Option<SystemTime>, OcspError> {
    let bad = |_| OcspError::Malformed;
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED,
    //     responseBytes [0] EXPLICIT SEQUENCE { responseType OID, response OCTET STRING } OPTIONAL }
    let (status, body) = yasna::parse_der(der, |r| {
        r.read_sequence(|r| {
            let status = r.next().read_enum()?;
            let body = r.read_optional(|r| {
                r.read_tagged(Tag::context(0), |r| {
                    r.read_sequence(|r| Ok((r.next().read_oid()?, r.next().read_bytes()?)))
                })
            })?;
            Ok((status, body))
        })
    })
    .map_err(bad)?;
    if status != 0 {
        return Err(OcspError::Status(status_name(status)));
    }
    let Some((kind, basic)) = body else {
        return Err(OcspError::Malformed);
    };
    if kind != ObjectIdentifier::from_slice(&OCSP_BASIC) {
        return Err(OcspError::NotBasic);
    }
    // BasicOCSPResponse ::= SEQUENCE { tbsResponseData ResponseData, signatureAlgorithm,
    //     signature BIT STRING, certs [0] EXPLICIT OPTIONAL }
    // ResponseData ::= SEQUENCE { version [0] EXPLICIT DEFAULT v1, responderID CHOICE {[1], [2]},
    //     producedAt GeneralizedTime, responses SEQUENCE OF SingleResponse, extensions [1] OPTIONAL }
    // SingleResponse ::= SEQUENCE { certID, certStatus, thisUpdate GeneralizedTime,
    //     nextUpdate [0] EXPLICIT GeneralizedTime OPTIONAL, singleExtensions [1] OPTIONAL }
    let updates: Vec<Option<i64>> = yasna::parse_der(&basic, |r| {
        r.read_sequence(|r| {
            let updates = r.next().read_sequence(|r| {
                r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
                r.next().read_der()?; // responderID
                r.next().read_generalized_time()?; // producedAt
                let mut updates = Vec::new();
                r.next().read_sequence_of(|r| {
                    r.read_sequence(|r| {
                        r.next().read_der()?; // certID
                        r.next().read_der()?; // certStatus
                        r.next().read_generalized_time()?; // thisUpdate
                        let next = r.read_optional(|r| {
                            r.read_tagged(Tag::context(0), |r| r.read_generalized_time())
                        })?;
                        r.read_optional(|r| r.read_tagged(Tag::context(1), |r| r.read_der()))?;
                        updates.push(next.map(|t| t.datetime().unix_timestamp()));
                        Ok(())
                    })
                })?;
                r.read_optional(|r| r.read_tagged(Tag::context(1), |r| r.read_der()))?;
                Ok(updates)
            })?;
            r.next().read_der()?; // signatureAlgorithm
            r.next().read_der()?; // signature
            r.read_optional(|r| r.read_tagged(Tag::context(0), |r| r.read_der()))?;
            Ok(updates)
        })
    })
    .map_err(bad)?;
    if updates.is_empty() {
        return Err(OcspError::Empty);
    }
    Ok(updates
        .into_iter()
        .flatten()
        .min()
        .map(|secs| match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
            // Before 1970: long expired.
            Err(_) => SystemTime::UNIX_EPOCH,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_unsuccessful_answers_are_refused() {
        assert_eq!(
            OcspResponse::parse(b"not der".to_vec()),
            Err(OcspError::Malformed)
        );
        // OCSPResponse { responseStatus tryLater(3) }
        assert_eq!(
            OcspResponse::parse(vec![0x30, 0x03, 0x0a, 0x01, 0x03]),
            Err(OcspError::Status("tryLater"))
        );
        // successful, but no responseBytes
        assert_eq!(
            OcspResponse::parse(vec![0x30, 0x03, 0x0a, 0x01, 0x00]),
            Err(OcspError::Malformed)
        );
    }

    #[test]
    fn freshness_follows_next_update() {
        let now = SystemTime::now();
        let r = |next_update| OcspResponse {
            der: vec![],
            next_update,
        };
        assert!(r(None).is_fresh(now));
        assert!(r(Some(now + Duration::from_secs(60))).is_fresh(now));
        assert!(!r(Some(now - Duration::from_secs(1))).is_fresh(now));
    }
}

//! Talking to the CA through instant-acme: the HTTPS client it uses (the
//! system's roots plus `ca_root`, aws-lc-rs), the account (from the cache,
//! else registered and stored), and one order from new to certificate with
//! the configured challenge answered through [`Challenges`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::cache::Cache;
use super::challenges::{Challenges, Pending};
use super::AcmeError;
use crate::config::{AcmeChallenge, AcmeConfig};

/// How often and how long an order's state is polled while the CA validates
/// and issues.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(200))
    .backoff(1.5)
    .timeout(Duration::from_secs(60));

/// An HTTPS client trusting the system's roots and `cfg.ca_root`.
fn http_client(cfg: &AcmeConfig) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = crate::certs::system_roots();
    if let Some(path) = &cfg.ca_root {
        let extra = crate::config::load_roots(path).map_err(|reason| AcmeError::Roots {
            path: path.clone(),
            reason,
        })?;
        roots.roots.extend(extra.roots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Certificate(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(https);
    Ok(Box::new(client))
}

/// The account of `cfg.directory`: the cached one, else a new registration
/// (stored before it is used, so a crash does not register twice).
pub(super) async fn account(cfg: &AcmeConfig, cache: &Cache) -> Result<Account, AcmeError> {
    if let Some(creds) = cache.load_account()? {
        let builder = Account::builder_with_http(http_client(cfg)?);
        return Ok(builder.from_credentials(creds).await?);
    }
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let (account, creds) = Account::builder_with_http(http_client(cfg)?)
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            None,
        )
        .await?;
    cache.save_account(&creds)?;
    tracing::info!(directory = %cfg.directory, account = %account.id(), "ACME account registered");
    Ok(account)
}

/// Places an order for `cfg.domains`, answers its challenges, and returns
/// the PEM chain and the PEM private key.
pub(super) async fn order(
    account: &Account,
    cfg: &AcmeConfig,
    challenges: &Arc<Challenges>,
) -> Result<(String, String), AcmeError> {
    let ids: Vec<Identifier> = cfg.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    // Answers stay installed until the order is done, whatever happens.
    let mut answers: Vec<Pending> = Vec::new();
    let kind = match cfg.challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authz = order.authorizations();
    while let Some(a) = authz.next().await {
        let mut a = a?;
        let domain = a.identifier().to_string();
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Authorization {
                    domain,
                    status: status_name(other),
                })
            }
        }
        let mut ch = a.challenge(kind.clone()).ok_or(AcmeError::NoChallenge {
            domain: domain.clone(),
            challenge: cfg.challenge.name(),
        })?;
        let ka = ch.key_authorization();
        answers.push(match cfg.challenge {
            AcmeChallenge::Http01 => challenges.add_http01(&ch.token, ka.as_str()),
            AcmeChallenge::TlsAlpn01 => challenges.add_tls_alpn01(&domain, ka.digest().as_ref())?,
        });
        ch.set_ready().await?;
    }
    let status = order.poll_ready(&POLL).await?;
    if status != OrderStatus::Ready {
        return Err(AcmeError::OrderInvalid {
            domains: cfg.domains.join(", "),
            challenge: cfg.challenge.name(),
        });
    }
    drop(answers);
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    Ok((chain_pem, key_pem))
}

fn status_name(s: AuthorizationStatus) -> &'static str {
    match s {
        AuthorizationStatus::Pending => "pending",
        AuthorizationStatus::Valid => "valid",
        AuthorizationStatus::Invalid => "invalid",
        AuthorizationStatus::Revoked => "revoked",
        AuthorizationStatus::Expired => "expired",
        AuthorizationStatus::Deactivated => "deactivated",
    }
}

//! The `chat` app (spec §4). Placeholder until the chat issue lands: every
//! endpoint answers 503 so nothing pretends to work.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::config::ChatConfig;
use crate::limits::ConnSlot;
use crate::proxy::error::{text_response, ProxyError};
use crate::shutdown::Shutdown;
use crate::Body;

pub struct Chat {
    #[allow(dead_code)]
    cfg: ChatConfig,
}

impl Chat {
    pub fn new(cfg: ChatConfig, _node_id: String, _shutdown: Shutdown) -> Arc<Self> {
        Arc::new(Self { cfg })
    }

    /// A validated WebSocket upgrade under the chat route.
    pub fn accept(
        &self,
        _req: Request<Incoming>,
        _prefix: &str,
        _slot: Arc<ConnSlot>,
    ) -> Result<Response<Body>, ProxyError> {
        Ok(text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "chat is not implemented yet\n",
        ))
    }

    /// Plain HTTP under the chat route.
    pub async fn http(&self, _req: Request<Incoming>, _prefix: &str) -> Response<Body> {
        text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "chat is not implemented yet\n",
        )
    }
}

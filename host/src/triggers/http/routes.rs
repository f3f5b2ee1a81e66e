//! Matching a request to a manifest route.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::errors::HostError;
use super::request_id::RequestId;
use super::App;
use crate::manifest::{route_pattern, HttpTrigger};

/// The manifest's HTTP routes.
pub struct RouteTable {
    router: matchit::Router<String>,
}

/// A matched route: the component to run and the path parameters.
#[derive(Debug, Clone)]
pub struct Matched {
    pub component: String,
    pub params: Vec<(String, String)>,
}

impl RouteTable {
    pub fn new(triggers: &[HttpTrigger]) -> anyhow::Result<Self> {
        let mut router = matchit::Router::new();
        for trigger in triggers {
            let pattern = route_pattern(&trigger.route)?;
            router
                .insert(pattern, trigger.component.clone())
                .with_context(|| format!("route `{}` conflicts with another route", trigger.route))?;
        }
        Ok(Self { router })
    }

    pub fn find(&self, path: &str) -> Option<Matched> {
        let found = self.router.at(path).ok()?;
        Some(Matched {
            component: found.value.clone(),
            params: found.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
    }
}

pub async fn layer(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    match app.routes.find(request.uri().path()) {
        Some(matched) => {
            request.extensions_mut().insert(Arc::new(matched));
            next.run(request).await
        }
        None => {
            let id = RequestId::of(&request);
            HostError::new(StatusCode::NOT_FOUND, "route_not_found", "no route matches this path")
                .respond(&id)
        }
    }
}

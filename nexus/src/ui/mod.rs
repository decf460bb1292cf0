//! The web console under `/ui` (docs/console.md): server-rendered pages (askama templates in
//! `nexus/templates/`, every value escaped), one embedded script and stylesheet, forms that POST
//! and redirect (303) so everything works without JavaScript. This module owns the routes and
//! the gates every request passes, so no handler repeats them: a live session (else a redirect
//! to the login page; a session whose console token was revoked or expired ends there), the
//! `Origin` check on every state-changing request (403 when foreign or missing), the read-only
//! role (403 on every action, in one layer over the action routes), every state-changing
//! request made durable before its answer (one flush, after the handler), and the security
//! headers (`Content-Security-Policy: default-src 'self'`) on every answer. It must never put a
//! token in a page or a log, and never change a job except through the store's own operations.

mod actions;
mod assets;
mod pages;
pub mod session;
mod terminal;
mod token_page;
mod tokens;
mod views;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::common::AppState;
use crate::store::now_ms;
use session::{Role, Sessions};

/// The console's shared state.
#[derive(Debug)]
pub struct Ui {
    pub app: Arc<AppState>,
    pub sessions: Sessions,
    tokens: Arc<tokens::ConsoleTokens>,
}

type St = State<Arc<Ui>>;

/// The content security policy of every console answer.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'";

/// The console's routes (`/ui/…`) and the console-token API, merged beside the API.
pub fn router(app: Arc<AppState>, mesh: crate::mesh::MeshPlane) -> anyhow::Result<Router> {
    let tokens = Arc::new(tokens::ConsoleTokens::open(&app)?);
    let ui = Arc::new(Ui {
        app: app.clone(),
        sessions: Sessions::load(app.store.clone(), now_ms())?,
        tokens: tokens.clone(),
    });
    // Every route here but logout: a read-only session's state-changing request is refused.
    let acting = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/jobs", get(pages::jobs).post(actions::submit))
        .route("/ui/submit", get(pages::submit_form))
        .route("/ui/jobs/{id}", get(pages::job))
        .route("/ui/jobs/{id}/events", get(actions::events))
        .route("/ui/jobs/{id}/cancel", post(actions::cancel))
        .route("/ui/dlq", get(pages::dlq))
        .route("/ui/dlq/{id}/requeue", post(actions::requeue))
        .route("/ui/dlq/{id}/purge", post(actions::purge_one))
        .route(
            "/ui/dlq/purge",
            get(pages::purge_confirm).post(actions::purge_all),
        )
        .route("/ui/nodes", get(pages::nodes))
        .route("/ui/nodes/{id}", get(pages::node))
        .route("/ui/tokens", get(token_page::list).post(token_page::create))
        .route("/ui/tokens/{id}/revoke", post(token_page::revoke))
        .layer(middleware::from_fn(read_only));
    let signed_in = acting
        .route("/ui/logout", post(actions::logout))
        .layer(middleware::from_fn_with_state(ui.clone(), gate));
    let open = Router::new()
        .route("/ui/login", get(pages::login).post(actions::login))
        .route("/ui/assets/{name}", get(assets::serve));
    Ok(signed_in
        .merge(open)
        .merge(terminal::router(ui.clone(), mesh))
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
        .merge(tokens::router(app, tokens)))
}

/// The live session a request carries: its id and role. A session whose console token was
/// revoked or has expired is ended here.
fn session_of(ui: &Ui, headers: &HeaderMap) -> Option<(String, Role)> {
    let id = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::from_cookie_header)?;
    let now = now_ms();
    let live = ui.sessions.check(id, now)?;
    if let Some(token) = &live.token_id {
        if !ui.tokens.live(token, now) {
            ui.sessions.end(id);
            tracing::info!(token_id = %token, "console session ended: its token is revoked or expired");
            return None;
        }
    }
    Some((id.to_string(), live.role))
}

/// Lets through only requests with a live session (redirected to the login page otherwise), and
/// hands the [`Viewer`] on.
async fn gate(State(ui): St, mut req: Request, next: Next) -> Response {
    let Some((session, role)) = session_of(&ui, req.headers()) else {
        return Redirect::to("/ui/login").into_response();
    };
    req.extensions_mut().insert(Viewer { role, session });
    next.run(req).await
}

/// Whether a request may change state (anything but GET and HEAD).
fn changes(req: &Request) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD)
}

/// Refuses a read-only session every state-changing request (403), after [`gate`].
async fn read_only(req: Request, next: Next) -> Response {
    let refused = req.extensions().get::<Viewer>().and_then(Viewer::refused);
    match refused {
        Some(r) if changes(&req) => {
            tracing::info!(path = %req.uri().path(), "a read-only console session was refused an action");
            r
        }
        _ => next.run(req).await,
    }
}

/// Who is looking: their role and session id.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub role: Role,
    pub session: String,
}

impl Viewer {
    /// The 403 answer when this viewer may not change things (every action, by [`read_only`];
    /// the pages only the admin sees).
    fn refused(&self) -> Option<Response> {
        (!self.role.may_act()).then(|| denied("a read-only console session cannot change anything"))
    }
}

fn denied(why: &str) -> Response {
    (StatusCode::FORBIDDEN, why.to_string()).into_response()
}

/// Whether a state-changing request comes from this console's own origin: its `Origin` must
/// name the host it was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(o), Some(h)) => {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                == Some(h)
        }
        _ => false,
    }
}

/// Whether the request reached the plane over TLS (a proxy in front says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// Refuses a state-changing request from another origin (403), makes what a state-changing
/// request wrote durable before its answer, and puts the security headers on every answer.
async fn guard(State(ui): St, req: Request, next: Next) -> Response {
    let mut resp = if !changes(&req) {
        next.run(req).await
    } else if !same_origin(req.headers()) {
        tracing::info!(path = %req.uri().path(), "console request from a foreign or missing origin refused");
        denied("this request did not come from the console's own page (Origin)")
    } else {
        let resp = next.run(req).await;
        match ui.app.store.flush().await {
            Ok(()) => resp,
            Err(e) => actions::failed(e),
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A rendered template, or 500 with the reason (the template's error, never a value).
fn render(t: &impl askama::Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// 303 to `to` (after a form's POST).
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

//! The other Azure hosts' managed-identity protocols (issue 13, `HOSTS.md`), host daemon only:
//! App Service / Functions (`GET /msi/token?api-version=2019-08-01`, header
//! `X-IDENTITY-HEADER`) and Azure ML (`api-version=2017-09-01`, header `secret`, selector
//! `clientid`), each on its own listener (config `app_service`, `azure_ml`).
//!
//! Same identities, token cache, token source and per-source limits as the IMDS endpoint
//! ([`crate::imds`]); other request rules and answer shapes: `expires_on` a string of epoch
//! seconds, and errors `{"statusCode": N, "message": "..."}` (what MSAL reads). Requests on
//! the IMDS and legacy listeners go to [`crate::imds::handle`].
//!
//! Azure Arc (config `arc`) speaks IMDS's token request behind a key-file challenge (`arc`).

use crate::agent::Agent;
use crate::challenge::ChallengeError;
use crate::config::HostEndpoint;
use crate::guard::Refusal;
use crate::http::{Method, Request};
use crate::identity::Selector;
use crate::imds::{self, Ctx, Error, Listener, Reply, TokenRequest};
use crate::limits::{DESCRIPTION_MAX, PARAM_DECODE_BUF, RESOURCE_MAX};
use crate::query;
use crate::token::Token;
use imds_hal::Entropy;
use serde::Serialize;

/// The App Service / Functions api-version (2019-08-01 protocol).
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";
/// The Azure ML api-version.
pub const AZURE_ML_API_VERSION: &str = "2017-09-01";
/// The token path of both protocols.
pub const MSI_TOKEN_PATH: &str = "/msi/token";

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    AppService,
    AzureMl,
}

impl Protocol {
    fn header(self) -> &'static str {
        match self {
            Protocol::AppService => "x-identity-header",
            Protocol::AzureMl => "secret",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Protocol::AppService => APP_SERVICE_API_VERSION,
            Protocol::AzureMl => AZURE_ML_API_VERSION,
        }
    }
    fn endpoint(self, agent: &Agent) -> Option<&HostEndpoint> {
        match self {
            Protocol::AppService => agent.hosts.app_service.as_ref(),
            Protocol::AzureMl => agent.hosts.azure_ml.as_ref(),
        }
    }
}

/// Handle one request that arrived on `listener`.
pub fn handle<E: Entropy>(
    listener: Listener,
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    let protocol = match listener {
        Listener::AppService => Protocol::AppService,
        Listener::AzureMl => Protocol::AzureMl,
        Listener::Arc => return arc(agent, req, ctx, entropy, reply),
        Listener::Legacy => return legacy(agent, req, ctx, entropy, reply),
        Listener::Imds => return imds::handle(agent, req, ctx, entropy, reply),
    };
    msi_token(protocol, agent, req, ctx, entropy, reply);
    if ctx.parked_since_us.is_some() && !reply.pending {
        imds::release(agent, ctx.peer);
    }
}

/// The legacy listener, which also serves Cloud Shell (`MSI_ENDPOINT=http://ADDR:PORT/oauth2/token`:
/// a form `POST` with `Metadata: true`). Its answers are IMDS's, except that errors of a form
/// `POST` carry Cloud Shell's shape `{"error": {"code", "message"}}`: MSAL's Cloud Shell client
/// reads `error.code` and `error.message` (and fails on a flat `error` string), azure-identity
/// reads neither. `GET` requests (the VM extension's clients) keep the flat IMDS errors.
fn legacy<E: Entropy>(
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    imds::handle(agent, req, ctx, entropy, reply);
    let form = req.header("content-type").is_some_and(|v| {
        let v = crate::http::trim(v);
        v.len() >= 33 && v[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
    });
    if req.method == Method::Post && form && reply.status >= 400 && reply.big.is_none() {
        cloud_shell_error(reply);
    }
}

/// Read a flat IMDS error body and write it again with `write(reply, status, code,
/// description)` (the status and `Retry-After` stay). Left as is when it is not one.
fn reshape_flat(reply: &mut Reply, write: impl FnOnce(&mut Reply, u16, &str, &str)) {
    #[derive(serde::Deserialize)]
    struct Flat<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    let Ok((flat, _)) = serde_json_core::from_slice::<Flat<'_>>(&reply.body) else {
        return;
    };
    let mut code: heapless::String<32> = heapless::String::new();
    let mut message: heapless::String<DESCRIPTION_MAX> = heapless::String::new();
    if code.push_str(flat.error).is_err() || message.push_str(flat.error_description).is_err() {
        return;
    }
    let status = reply.status;
    write(reply, status, &code, &message);
}

/// Re-shape a flat IMDS error body as `{"error": {"code", "message"}}`.
fn cloud_shell_error(reply: &mut Reply) {
    #[derive(Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Nested<'a> {
        error: Inner<'a>,
    }
    reshape_flat(reply, |reply, status, code, message| {
        reply.json(
            status,
            &Nested {
                error: Inner { code, message },
            },
        );
    });
}

/// Azure Arc's api-versions (its documentation's samples).
pub const ARC_API_VERSIONS: [&str; 2] = ["2020-06-01", "2019-11-01"];

/// Azure Arc: the IMDS token request, behind a key-file challenge. Without a valid
/// `Authorization: Basic <secret>` the answer is 401 with `WWW-Authenticate: Basic
/// realm=<key_dir>/<name>.key`, a file the daemon writes before the answer goes out
/// ([`crate::challenge`]); with one, the token as IMDS answers it (`expires_in`,
/// `expires_on`, the selector echoed). Errors are IMDS's.
fn arc<E: Entropy>(
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    use imds::RequestError as R;
    reply.clear();
    if !imds::path_is(req.path, "/metadata/identity/oauth2/token") {
        return reply.fail(Error::Request(R::PathNotFound));
    }
    // A parked request (waiting for a fetch) passed the challenge already: its secret is used.
    if ctx.parked_since_us.is_none() {
        if !matches!(req.method, Method::Get | Method::Head) {
            reply.allow = Some("GET, HEAD");
            return reply.fail(Error::Request(R::MethodNotAllowed));
        }
        if !agent.guard.source_allowed(ctx.peer) {
            return reply.fail(Error::Refused(Refusal::SourceNotAllowed));
        }
        if !imds::metadata_header_ok(req) {
            return reply.fail(Error::Request(R::MetadataHeaderMissing));
        }
        let mut buf = [0u8; PARAM_DECODE_BUF];
        let version_ok = match query::decode(req.query.as_bytes(), &mut buf) {
            Ok(p) => p
                .get("api-version")
                .is_some_and(|v| ARC_API_VERSIONS.contains(&v)),
            Err(e) => return reply.fail(Error::Query(e)),
        };
        if !version_ok {
            return reply.error(
                400,
                "invalid_request",
                "api-version must be 2020-06-01 or 2019-11-01",
            );
        }
        let sent = req
            .header("authorization")
            .map(crate::http::trim)
            .and_then(|v| v.strip_prefix(b"Basic "))
            .map(crate::http::trim);
        let now = ctx.now.mono_us;
        if !sent.is_some_and(|s| agent.arc_keys.redeem(s, now)) {
            return challenge(agent, entropy, now, reply);
        }
    }
    imds::handle(agent, req, ctx, entropy, reply);
}

/// The 401 with a fresh key file's path.
fn challenge<E: Entropy>(agent: &mut Agent, entropy: &mut E, now_us: u64, reply: &mut Reply) {
    let Some(dir) = agent.hosts.arc.as_ref().map(|a| a.key_dir.clone()) else {
        return reply.fail(Error::Request(imds::RequestError::PathNotFound));
    };
    let name = match agent.arc_keys.issue(entropy, now_us) {
        Ok(n) => n,
        Err(ChallengeError::Full) => {
            reply.retry_after_s = Some(1);
            return reply.error(
                503,
                "service_unavailable",
                "Too many outstanding key-file challenges",
            );
        }
        Err(ChallengeError::Entropy) => {
            return reply.error(500, "server_error", "No entropy for a challenge")
        }
    };
    let mut header = heapless::String::new();
    let fits = header.push_str("Basic realm=").is_ok()
        && header.push_str(&dir).is_ok()
        && header.push('/').is_ok()
        && header.push_str(&name).is_ok()
        && header.push_str(".key").is_ok();
    if !fits {
        return reply.error(500, "server_error", "Challenge header too long");
    }
    reply.error(
        401,
        "unauthorized",
        "Read the secret from the file named by WWW-Authenticate and send it as Authorization: Basic <secret>",
    );
    reply.challenge = Some(header);
}

/// An error the way App Service and Azure ML send it.
fn fail(reply: &mut Reply, status: u16, message: &str) {
    #[derive(Serialize)]
    struct E<'a> {
        #[serde(rename = "statusCode")]
        status_code: u16,
        message: &'a str,
    }
    reply.json(
        status,
        &E {
            status_code: status,
            message,
        },
    );
}

/// Any error of the other modules, in this shape (status and text of [`imds::wire`]).
fn fail_with(reply: &mut Reply, error: Error) {
    let w = imds::wire(error);
    let mut message: heapless::String<DESCRIPTION_MAX> = heapless::String::new();
    w.description.describe(&mut message);
    reply.retry_after_s = w.retry_after_s;
    fail(reply, w.status, &message);
}

/// Equal secrets, in time that does not depend on where they differ.
fn same_secret(sent: &[u8], expected: &[u8]) -> bool {
    sent.len() == expected.len()
        && sent
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn msi_token<E: Entropy>(
    protocol: Protocol,
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    reply.clear();
    if !imds::path_is(req.path, MSI_TOKEN_PATH) {
        return fail(reply, 404, "Path not found");
    }
    if !matches!(req.method, Method::Get | Method::Head) {
        reply.allow = Some("GET, HEAD");
        return fail(reply, 405, "The requested method is not allowed");
    }
    if !agent.guard.source_allowed(ctx.peer) {
        return fail_with(reply, Error::Refused(Refusal::SourceNotAllowed));
    }
    if !agent.guard.host_allowed(req.header("host")) {
        return fail_with(reply, Error::Refused(Refusal::HostNotAllowed));
    }
    let Some(endpoint) = protocol.endpoint(agent) else {
        return fail(reply, 404, "Path not found");
    };
    match req.header(protocol.header()) {
        None => {
            return fail(
                reply,
                400,
                match protocol {
                    Protocol::AppService => "Required header X-IDENTITY-HEADER not specified",
                    Protocol::AzureMl => "Required header secret not specified",
                },
            )
        }
        Some(v) if !same_secret(crate::http::trim(v), endpoint.secret.as_bytes()) => {
            return fail(
                reply,
                401,
                match protocol {
                    Protocol::AppService => "X-IDENTITY-HEADER does not match IDENTITY_HEADER",
                    Protocol::AzureMl => "The secret header does not match MSI_SECRET",
                },
            )
        }
        Some(_) => {}
    }
    if imds::proxied(req) {
        return fail_with(reply, Error::Request(imds::RequestError::Proxied));
    }
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let params = match query::decode(req.query.as_bytes(), &mut buf) {
        Ok(p) => p,
        Err(e) => return fail_with(reply, Error::Query(e)),
    };
    match params.get("api-version") {
        None => return fail(reply, 400, "Parameter 'api-version' is required"),
        Some(v) if v != protocol.api_version() => {
            return fail(
                reply,
                400,
                match protocol {
                    Protocol::AppService => "api-version must be 2019-08-01",
                    Protocol::AzureMl => "api-version must be 2017-09-01",
                },
            )
        }
        Some(_) => {}
    }
    let resource = match params.get("resource") {
        Some(r) if !r.is_empty() => r,
        _ => return fail(reply, 400, "Parameter 'resource' is required"),
    };
    if resource.len() > RESOURCE_MAX {
        return fail(reply, 400, "Parameter 'resource' is too long");
    }
    if params.duplicate().is_some() {
        return fail(reply, 400, "A query parameter is given more than once");
    }
    // Selectors: App Service names them as IMDS does (client_id, object_id / principal_id,
    // mi_res_id / msi_res_id); Azure ML sends `clientid`, which may name the system-assigned
    // identity too (selection by client id finds every kind).
    let selector = match protocol {
        Protocol::AppService => match Selector::from_params(&params) {
            Ok(s) => s,
            Err(e) => return fail_with(reply, Error::Select(e)),
        },
        Protocol::AzureMl => params
            .get("clientid")
            .map(Selector::ClientId)
            .unwrap_or(Selector::Default),
    };
    let index = match agent.identities.select(selector) {
        Ok(i) => i,
        Err(e) => return fail_with(reply, Error::Select(e)),
    };
    let tr = TokenRequest {
        index,
        resource,
        selector,
        bypass: false,
        parked_since_us: ctx.parked_since_us,
        peer: ctx.peer,
        mono_us: ctx.now.mono_us,
    };
    serve(agent, &tr, ctx, entropy, reply);
}

/// The token from the agent's token source, as [`imds`] obtains it (cache, mint, or a fetch
/// the request waits for), in this protocol's shape.
fn serve<E: Entropy>(
    agent: &mut Agent,
    r: &TokenRequest<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    match imds::obtain(agent, r, ctx.now, entropy) {
        imds::Got::Ready(t, identity) => {
            write_token(reply, t, r.resource, &identity.client_id);
            if reply.status == 200 {
                reply.client_id = Some(identity.client_id.clone());
            }
        }
        imds::Got::Pending => {
            imds::park(agent, r, reply);
            if !reply.pending {
                // Refused or waited too long: IMDS's error, in this protocol's shape.
                reshape_flat(reply, |reply, status, _, message| {
                    fail(reply, status, message)
                });
            }
        }
        imds::Got::Failed(e) => fail_with(reply, e),
    }
}

/// `{"access_token","expires_on","resource","token_type","client_id","not_before"}`, numbers
/// as strings of epoch seconds (App Service's documented sample; MSAL and azure-identity
/// compute `expires_in` from `expires_on`).
fn write_token(reply: &mut Reply, t: &Token, resource: &str, client_id: &str) {
    #[derive(Serialize)]
    struct Body<'a> {
        access_token: &'a str,
        expires_on: &'a str,
        resource: &'a str,
        token_type: &'a str,
        client_id: &'a str,
        not_before: &'a str,
    }
    let expires_on = imds::decimal(t.expires_on);
    let not_before = imds::decimal(t.not_before);
    reply.json(
        200,
        &Body {
            access_token: t.access_token.as_str(),
            expires_on: &expires_on,
            resource,
            token_type: "Bearer",
            client_id,
            not_before: &not_before,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn cloud_shell_errors_are_nested() {
        let mut r = Reply::new();
        r.error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
        r.retry_after_s = Some(3);
        cloud_shell_error(&mut r);
        assert_eq!(r.status, 400);
        assert_eq!(r.retry_after_s, Some(3));
        assert_eq!(
            core::str::from_utf8(&r.body).unwrap(),
            r#"{"error":{"code":"invalid_request","message":"Required metadata header not specified"}}"#
        );
    }

    #[test]
    fn app_service_errors_carry_status_code_and_message() {
        let mut r = Reply::new();
        fail(
            &mut r,
            401,
            "X-IDENTITY-HEADER does not match IDENTITY_HEADER",
        );
        assert_eq!(r.status, 401);
        assert_eq!(
            core::str::from_utf8(&r.body).unwrap(),
            r#"{"statusCode":401,"message":"X-IDENTITY-HEADER does not match IDENTITY_HEADER"}"#
        );
        fail_with(
            &mut r,
            Error::Refused(Refusal::TooMany { retry_after_s: 2 }),
        );
        assert_eq!(r.status, 429);
        assert_eq!(r.retry_after_s, Some(2));
        assert!(core::str::from_utf8(&r.body)
            .unwrap()
            .starts_with(r#"{"statusCode":429,"message":""#));
    }
}

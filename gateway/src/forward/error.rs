//! The error answers of the gateway, in the classic Spring JSON shape
//! `{"timestamp","status","error","message","path"}`, with the status that
//! says what happened (the classic gateway answered 500 to everything).

use http::{HeaderValue, Response, StatusCode, header};

use crate::forward::body::ProxyBody;

/// Marks a response the gateway made itself (an error it answers, rather
/// than an instance's answer passed on), with the message it gave.
#[derive(Debug, Clone)]
pub struct GatewayMade(pub Box<str>);

/// A JSON error answer.
pub fn error_response(status: StatusCode, message: &str, path: &str) -> Response<ProxyBody> {
    let json = shoal_http::spring::error_json::<()>(status, message, path, &[]);
    let mut response = Response::new(ProxyBody::full(json));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .extensions_mut()
        .insert(GatewayMade(message.into()));
    response
}

/// An error and its sources, `outer: inner: root`, for messages that say
/// what really failed (hyper's "client error (Connect)" alone does not).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn spring_shape_with_fields_in_order() {
        let r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no instance of story-service is up",
            "/api/story-service/story",
        );
        assert_eq!(r.status(), 503);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&bytes).unwrap();
        let order: Vec<usize> = [
            "\"timestamp\"",
            "\"status\":503",
            "\"error\":\"Service Unavailable\"",
            "\"message\"",
            "\"path\":\"/api/story-service/story\"",
        ]
        .iter()
        .map(|k| {
            text.find(k)
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}

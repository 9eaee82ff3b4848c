//! The browser client's files, embedded in the binary and served at `GET /client/{file}`:
//! the library (`outlast.js`, `outlast.d.ts`), the image worker, the wasm-bindgen glue and the
//! two WebAssembly builds of outlast-image (SIMD and non-SIMD; built by `web/build-wasm.sh`).
//!
//! The URLs carry no version, so every answer is `Cache-Control: no-cache` with a strong
//! `ETag` (sha256 of the content): browsers revalidate and get `304` while nothing changed.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `/client/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "outlast.js",
        content_type: JS,
        body: include_bytes!("../../../../web/client/outlast.js"),
    },
    Asset {
        name: "outlast.d.ts",
        content_type: "application/typescript; charset=utf-8",
        body: include_bytes!("../../../../web/client/outlast.d.ts"),
    },
    Asset {
        name: "image-worker.js",
        content_type: JS,
        body: include_bytes!("../../../../web/client/image-worker.js"),
    },
    Asset {
        name: "outlast_image.js",
        content_type: JS,
        body: include_bytes!("../../../../web/client/outlast_image.js"),
    },
    Asset {
        name: "outlast_image_simd.wasm",
        content_type: "application/wasm",
        body: include_bytes!("../../../../web/client/outlast_image_simd.wasm"),
    },
    Asset {
        name: "outlast_image_nosimd.wasm",
        content_type: "application/wasm",
        body: include_bytes!("../../../../web/client/outlast_image_nosimd.wasm"),
    },
];

/// The quoted ETag of each asset, computed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16])))
            .collect()
    })
}

/// `GET /client/{file}` for the embedded files; anything else is 404.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/client/{file}", get(serve))
}

async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such client file").into_response();
    };
    let asset = &ASSETS[i];
    let etag = &etags()[i];
    let mut out = HeaderMap::new();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        out.insert(header::ETAG, v);
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (StatusCode::OK, out, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, inm: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(t) = inm {
            req = req.header(header::IF_NONE_MATCH, t);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("answer")
    }

    #[tokio::test]
    async fn serves_every_asset_with_type_and_etag_and_answers_304() {
        for a in ASSETS {
            let r = get(&format!("/client/{}", a.name), None).await;
            assert_eq!(r.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
            let tag = r.headers()[header::ETAG].to_str().expect("etag").to_owned();
            let body = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .expect("body");
            assert_eq!(&body[..], a.body);
            let again = get(&format!("/client/{}", a.name), Some(&tag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        }
        assert_eq!(
            get("/client/nope.js", None).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/client/..%2Fsrc%2Flib.rs", None).await.status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn wasm_files_are_real_modules() {
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".wasm")) {
            assert_eq!(&a.body[..4], b"\0asm", "{}", a.name);
        }
    }
}

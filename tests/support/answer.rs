//! An HTTP answer read whole (status, the headers a client acts on, body), so tests can compare
//! a resource server's refusal with sessiond's own byte for byte.

use reqwest::StatusCode;
use serde_json::Value;

#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Answer {
    /// The whole answer; `None` if its body cannot be read.
    pub async fn try_read(r: reqwest::Response) -> Option<Answer> {
        let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        Some(Answer {
            status: r.status(),
            content_type: header("content-type"),
            www_authenticate: header("www-authenticate"),
            retry_after: header("retry-after"),
            body: r.text().await.ok()?,
        })
    }

    pub async fn read(r: reqwest::Response) -> Answer {
        Answer::try_read(r).await.expect("the body reads")
    }

    /// The problem body's `code` (empty if none).
    pub fn code(&self) -> String {
        let body: Value = serde_json::from_str(&self.body).unwrap_or_default();
        body["code"].as_str().unwrap_or_default().to_string()
    }
}

//! Businesses (tenants), created by the operator.

use serde::Deserialize;
use utoipa::ToSchema;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{clean_name, durable_write, ok_json, BusinessView};
use crate::error::AdminError;
use crate::random;
use crate::state::AppState;
use crate::store::{now, Business};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBusiness {
    /// 1 to 200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    name: String,
}

#[utoipa::path(post, path = "/v1/businesses", tag = "businesses", summary = "Create a business (a tenant)", security(("operator" = [])), request_body = CreateBusiness,
    responses(
        (status = 201, description = "Created", body = BusinessView)
    )
)]
pub async fn create_business(state: AppState, body: CreateBusiness) -> Result<Response, AdminError> {
    let name = clean_name(&body.name, "name")?;
    let business = Business::new(random::id("biz_")?, name, now());
    let record = business.clone();
    durable_write(state.store(), move |s| s.create_business(&record)).await?;
    tracing::info!(business = %business.id, "business created");
    ok_json(StatusCode::CREATED, &BusinessView { id: business.id, name: business.name })
}

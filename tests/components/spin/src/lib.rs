//! Test component: never returns.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;

payfn_sdk::http_step!(handle);

fn handle(_req: &Request) -> Result<Response, ApiError> {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

//! Test component: allocates until the memory limit stops it.

use payfn_sdk::http::{Request, Response};
use payfn_sdk::ApiError;

payfn_sdk::http_step!(handle);

fn handle(_req: &Request) -> Result<Response, ApiError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

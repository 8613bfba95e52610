//! Rates of authenticated users (`authrcptrate`, `authmsgrate`) counted on
//! each user's home shard ([`shard::home::home_shard_of_name`]), so a user
//! spreading connections over addresses, and so over shards, still gets one
//! budget for the whole server. A shard checks the users it is home to in
//! its own limiter and asks the home over the mesh for the others.

use std::cell::RefCell;
use std::time::Instant;

use policy::rate::{RateDecision, RateLimits};

/// One check sent to a user's home shard.
pub struct UserRateQuestion {
    pub(crate) user: String,
    pub(crate) message: bool,
    pub(crate) reply: tokio::sync::oneshot::Sender<RateDecision>,
}

/// Where a shard sends its questions about other shards' users.
pub struct UserRateRouter {
    index: usize,
    senders: Vec<shard::MeshSender<UserRateQuestion>>,
}

impl UserRateRouter {
    /// Shard `index`'s router; `senders[i]` reaches shard `i`.
    pub fn new(index: usize, senders: Vec<shard::MeshSender<UserRateQuestion>>) -> Self {
        UserRateRouter { index, senders }
    }
}

/// One message (`message`) or one recipient of `user` against the per-user
/// limits, on the user's home shard. A home that cannot be reached (the
/// server is stopping) is not waited for: the local limiter answers.
pub async fn check_user(
    router: Option<&UserRateRouter>,
    rates: &RefCell<RateLimits>,
    user: &str,
    message: bool,
) -> RateDecision {
    let user = user.to_ascii_lowercase();
    if let Some(r) = router {
        let home = shard::home::home_shard_of_name(&user, r.senders.len());
        if home != r.index {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let q = UserRateQuestion {
                user: user.clone(),
                message,
                reply,
            };
            if r.senders[home].send(q).await.is_ok() {
                if let Ok(d) = answer.await {
                    return d;
                }
            }
        }
    }
    check_here(rates, &user, message)
}

/// One check against this shard's own limiter.
pub(crate) fn check_here(rates: &RefCell<RateLimits>, user: &str, message: bool) -> RateDecision {
    let now = Instant::now();
    // The address is not used when a user is given.
    let ip = std::net::IpAddr::from([0, 0, 0, 0]);
    let mut rates = rates.borrow_mut();
    if message {
        rates.check_message(ip, Some(user), now)
    } else {
        rates.check_rcpt(ip, Some(user), now)
    }
}

//! AlterUserScramCredentials: adds, replaces and deletes users' SCRAM credentials without a
//! restart (`kafka-configs --alter --add-config 'SCRAM-SHA-256=[password=...]'`, admin
//! clients' `alter_user_scram_credentials`). The client salts the password itself; the
//! broker keeps the derived keys, durably, before it answers. Checks as Kafka's: known
//! mechanism, a name, 4096-16384 rounds, each user and mechanism once per request, and a
//! deletion only of a stored credential (those of `--sasl-users` stay with the flag). A
//! user's changes apply together or, when one of them fails its check, not at all.

use std::collections::{BTreeMap, HashMap};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse,
};

use super::sasl::{scram_mechanism_known, ScramUpsert, SCRAM_ITERATIONS_ACCEPTED};
use super::{str_bytes, Broker};

/// Longest salt kept (clients send 16-64 random bytes); the stored record gives it a u16
/// length.
const MAX_SALT_BYTES: usize = 1024;

pub async fn handle(
    broker: &Broker,
    request: AlterUserScramCredentialsRequest,
) -> AlterUserScramCredentialsResponse {
    // Each user's first failure; users without one have their changes applied.
    let mut failures: BTreeMap<String, (ResponseError, String)> = BTreeMap::new();
    let mut fail = |user: &str, error: ResponseError, message: &str| {
        failures
            .entry(user.to_string())
            .or_insert((error, message.to_string()));
    };
    let mut times: HashMap<(String, i8), usize> = HashMap::new();
    let changes = request
        .deletions
        .iter()
        .map(|d| (d.name.as_str(), d.mechanism))
        .chain(
            request
                .upsertions
                .iter()
                .map(|u| (u.name.as_str(), u.mechanism)),
        );
    for (user, mechanism) in changes {
        *times.entry((user.to_string(), mechanism)).or_default() += 1;
    }
    for ((user, _), count) in &times {
        if *count > 1 {
            fail(
                user,
                ResponseError::DuplicateResource,
                "A user credential cannot be altered twice in the same request",
            );
        }
    }
    let check = |user: &str, mechanism: i8| {
        if user.is_empty() {
            Err((
                ResponseError::UnacceptableCredential,
                "Username must not be empty",
            ))
        } else if !scram_mechanism_known(mechanism) {
            Err((
                ResponseError::UnsupportedSaslMechanism,
                "Unknown SCRAM mechanism",
            ))
        } else {
            Ok(())
        }
    };
    for deletion in &request.deletions {
        let user = deletion.name.as_str();
        if let Err((error, message)) = check(user, deletion.mechanism) {
            fail(user, error, message);
        } else if !broker.scram.has(user, deletion.mechanism) {
            fail(
                user,
                ResponseError::ResourceNotFound,
                "Attempt to delete a user credential that does not exist",
            );
        }
    }
    for upsertion in &request.upsertions {
        let user = upsertion.name.as_str();
        if let Err((error, message)) = check(user, upsertion.mechanism) {
            fail(user, error, message);
        } else if upsertion.iterations < *SCRAM_ITERATIONS_ACCEPTED.start() {
            fail(
                user,
                ResponseError::UnacceptableCredential,
                "Too few iterations",
            );
        } else if upsertion.iterations > *SCRAM_ITERATIONS_ACCEPTED.end() {
            fail(
                user,
                ResponseError::UnacceptableCredential,
                "Too many iterations",
            );
        } else if upsertion.salt.is_empty() || upsertion.salted_password.is_empty() {
            fail(
                user,
                ResponseError::UnacceptableCredential,
                "The salt and the salted password must not be empty",
            );
        } else if upsertion.salt.len() > MAX_SALT_BYTES {
            fail(
                user,
                ResponseError::UnacceptableCredential,
                "The salt is too long",
            );
        }
    }
    let upserts: Vec<ScramUpsert> = request
        .upsertions
        .into_iter()
        .filter(|u| !failures.contains_key(u.name.as_str()))
        .map(|u| ScramUpsert {
            user: u.name.to_string(),
            mechanism: u.mechanism,
            iterations: u.iterations,
            salt: u.salt,
            salted_password: u.salted_password,
        })
        .collect();
    let deletes: Vec<(String, i8)> = request
        .deletions
        .into_iter()
        .filter(|d| !failures.contains_key(d.name.as_str()))
        .map(|d| (d.name.to_string(), d.mechanism))
        .collect();
    let mut users: Vec<String> = times.into_keys().map(|(user, _)| user).collect();
    users.sort();
    users.dedup();
    let applied = if upserts.is_empty() && deletes.is_empty() {
        Ok(())
    } else {
        broker.scram.alter(&broker.log, upserts, deletes).await
    };
    if let Err(e) = &applied {
        tracing::warn!(error = %e, "could not store SCRAM credentials");
    }
    let mut response = AlterUserScramCredentialsResponse::default();
    response.results = users
        .into_iter()
        .map(|user| {
            let mut result = AlterUserScramCredentialsResult::default();
            let outcome = match (failures.get(&user), &applied) {
                (Some((error, message)), _) => Some((*error, message.clone())),
                (None, Err(e)) => Some((ResponseError::KafkaStorageError, e.to_string())),
                (None, Ok(())) => None,
            };
            if let Some((error, message)) = outcome {
                result.error_code = error.code();
                result.error_message = Some(str_bytes(&message));
            } else {
                tracing::info!(%user, "SCRAM credentials altered");
            }
            result.user = str_bytes(&user);
            result
        })
        .collect();
    response
}

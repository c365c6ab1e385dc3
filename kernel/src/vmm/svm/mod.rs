//! AMD-V (SVM with nested paging): enabling it per CPU ([`enable`]), the
//! world switch ([`entry`]) and the vCPU ([`vcpu`]). Boot-time decisions
//! and everything host-testable are in `backend::svm`.

pub mod enable;
pub mod entry;
pub mod vcpu;

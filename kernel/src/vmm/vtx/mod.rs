//! Intel VT-x: enabling VMX per CPU ([`enable`]), the world switch
//! ([`entry`]) and the vCPU ([`vcpu`]). Boot-time decisions and everything
//! host-testable are in `backend::vtx`.

pub mod count;
pub mod enable;
pub mod entry;
pub mod vcpu;

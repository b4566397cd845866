//! A throwaway PKI for tests: a CA and leaves made with the `openssl` command line.

use std::path::PathBuf;
use std::process::Command;

use super::{free_port, text};

/// `openssl req` arguments for a new P-256 key without a passphrase; the key file's name
/// follows.
const NEW_KEY: [&str; 6] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
];

/// A throwaway PKI in a temporary folder, made with the `openssl` command line.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tokengate-pki-{name}-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl (bash .ci/setup)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    }

    /// A self-signed CA `name`.pem / `name`.key.
    pub fn ca(&self, name: &str) -> PathBuf {
        self.openssl(
            &[
                &["req", "-x509"][..],
                &NEW_KEY,
                &[
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ],
            ]
            .concat(),
        );
        self.path(&format!("{name}.pem"))
    }

    /// A leaf `name`.pem / `name`.key signed by `ca`, with common name `name`, the given
    /// subjectAltName and extended key usage (`serverAuth` or `clientAuth`).
    pub fn leaf(&self, ca: &str, name: &str, san: &str, usage: &str) -> (PathBuf, PathBuf) {
        let ext = format!(
            "basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{}",
            if san.is_empty() {
                String::new()
            } else {
                format!("subjectAltName={san}\n")
            }
        );
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(
            &[
                &["req", "-new"][..],
                &NEW_KEY,
                &[
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &free_port().to_string(),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ]);
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }

    /// Writes a configuration file into the folder.
    pub fn config(&self, yaml: &str) -> String {
        let path = self.path(&format!("tokengate-{}.yaml", free_port()));
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

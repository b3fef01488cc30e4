# shellcheck shell=bash
# A CA and a signer of nobody the image knows, made like the development ones
# (image/update/dev-keys): other_signer DIR writes DIR/other-ca.pem, DIR/other.pem and DIR/other.key.
other_signer() {
    local dir="$1" cnf
    cnf="$(dirname "${BASH_SOURCE[0]}")/../../image/update/dev-keys/openssl.cnf"
    openssl req -x509 -config "$cnf" -extensions v3_ca -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
        -nodes -keyout "$dir/other-ca.key" -out "$dir/other-ca.pem" -days 30 -subj "/CN=other CA" 2>/dev/null
    openssl req -config "$cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$dir/other.key" -out "$dir/other.csr" -subj "/CN=other signer" 2>/dev/null
    openssl x509 -req -in "$dir/other.csr" -CA "$dir/other-ca.pem" -CAkey "$dir/other-ca.key" \
        -CAcreateserial -days 30 -extfile "$cnf" -extensions v3_signer -out "$dir/other.pem" 2>/dev/null
}

-- cdrflow schema, version 13: record_id_for(source, external_id), a record's id in SQL.
--
-- Since schema 12 a record is found by its id, through the primary key of call_keys and
-- call_records: no index serves `source = ... AND external_id = ...` any more. The id is
-- the uuid5 of RECORD_NAMESPACE and "{source}\n{external_id}" in UTF-8 (schemas/record.py,
-- record_id_for), and PostgreSQL has no built-in SHA-1 (md5 and sha224 up only); pgcrypto
-- or uuid-ossp may not be installable by the schema's owner. So SHA-1 (RFC 3174) is
-- written out here, on 32-bit words held in bigint, and the version and variant bits set
-- as uuid5 sets them. A query computes it once (`WHERE record_id = record_id_for(...)`).
-- Only a catalog change: no table is locked or read.

CREATE FUNCTION record_id_for(source text, external_id text) RETURNS uuid
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
DECLARE
    message bytea := '\x6f0d2c1e8a7b5e439c1d3b2a4f5e6d70'::bytea  -- RECORD_NAMESPACE
        || convert_to(source || E'\n' || external_id, 'UTF8');
    mask constant bigint := x'FFFFFFFF'::bigint;  -- every sum is taken modulo 2^32
    h bigint[] := ARRAY[x'67452301', x'EFCDAB89', x'98BADCFE', x'10325476', x'C3D2E1F0']::bigint[];
    w bigint[];
    a bigint; b bigint; c bigint; d bigint; e bigint; f bigint; k bigint; t bigint;
BEGIN
    -- Padding: a 1 bit, zeros up to 56 bytes modulo 64, the length in bits (8 bytes).
    message := message || '\x80'::bytea
        || decode(repeat('00', 63 - (length(message) + 8) % 64), 'hex')
        || int8send(length(message)::bigint * 8);
    FOR block IN 0 .. length(message) / 64 - 1 LOOP
        w := array_fill(0::bigint, ARRAY[80], ARRAY[0]);
        FOR i IN 0 .. 15 LOOP
            w[i] := ('x' || encode(substring(message FROM block * 64 + i * 4 + 1 FOR 4), 'hex'))
                ::bit(32)::bigint;
        END LOOP;
        FOR i IN 16 .. 79 LOOP
            t := w[i - 3] # w[i - 8] # w[i - 14] # w[i - 16];
            w[i] := ((t << 1) | (t >> 31)) & mask;
        END LOOP;
        a := h[1]; b := h[2]; c := h[3]; d := h[4]; e := h[5];
        FOR i IN 0 .. 79 LOOP
            IF i < 20 THEN
                f := (b & c) | ((~b) & d); k := x'5A827999'::bigint;
            ELSIF i < 40 THEN
                f := b # c # d; k := x'6ED9EBA1'::bigint;
            ELSIF i < 60 THEN
                f := (b & c) | (b & d) | (c & d); k := x'8F1BBCDC'::bigint;
            ELSE
                f := b # c # d; k := x'CA62C1D6'::bigint;
            END IF;
            t := ((((a << 5) | (a >> 27)) & mask) + f + e + k + w[i]) & mask;
            e := d; d := c; c := ((b << 30) | (b >> 2)) & mask; b := a; a := t;
        END LOOP;
        h[1] := (h[1] + a) & mask; h[2] := (h[2] + b) & mask; h[3] := (h[3] + c) & mask;
        h[4] := (h[4] + d) & mask; h[5] := (h[5] + e) & mask;
    END LOOP;
    -- The digest's first 16 bytes, with version 5 (byte 6) and the RFC 4122 variant (byte 8).
    h[2] := h[2] & ~x'F000'::bigint | x'5000'::bigint;
    h[3] := h[3] & x'3FFFFFFF'::bigint | x'80000000'::bigint;
    RETURN (lpad(to_hex(h[1]), 8, '0') || lpad(to_hex(h[2]), 8, '0')
        || lpad(to_hex(h[3]), 8, '0') || lpad(to_hex(h[4]), 8, '0'))::uuid;
END
$$;

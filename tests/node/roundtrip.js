'use strict';
// JSON round-trip oracle for tests/unit/contract/test_jsoncanon.py.
//
// Reads newline-delimited requests on stdin and writes exactly one line per request:
//   <base64 body>     -> base64(Buffer.from(JSON.stringify(JSON.parse(body)), 'utf8'))
//                        (body is the base64-decoded bytes, read as UTF-8), i.e. the bytes a
//                        receiver re-serializing the parsed body would compute its HMAC over.
//   n:<base64 8 bytes> -> String(x) for the little-endian IEEE-754 double x in those bytes.
// A request that throws is answered with "!" followed by the error message (base64 never
// contains "!"). Exits when stdin closes.
const readline = require('readline');

function answer(line) {
  if (line.startsWith('n:')) {
    return String(Buffer.from(line.slice(2), 'base64').readDoubleLE(0));
  }
  const body = Buffer.from(line, 'base64').toString('utf8');
  return Buffer.from(JSON.stringify(JSON.parse(body)), 'utf8').toString('base64');
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  let out;
  try {
    out = answer(line);
  } catch (err) {
    out = '!' + String(err && err.message).replace(/[\r\n]+/g, ' ');
  }
  process.stdout.write(out + '\n');
});

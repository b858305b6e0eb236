// congodb-server.mjs: the MongoDB-wire test server for authd's tests (scripts/mongo-test-server
// installs its modules and runs this file; nothing here is committed but this launcher).
//
//   node congodb-server.mjs serve MODULES_DIR PORT   serve on 127.0.0.1:PORT until SIGTERM/SIGINT;
//                                                    prints "ready PORT" once listening
//   node congodb-server.mjs ping MODULES_DIR PORT [TIMEOUT_S]
//                                                    one OP_MSG {ping: 1}; exit 0 when ok: 1
//
// The server is the in-memory "congodb" of @push.rocks/smartmongo 2.2.0: it speaks OP_MSG well
// enough for libmongoc (hello, find, insert, update with upsert, findAndModify, count,
// createIndexes, renameCollection, drop) but keeps no unique index and takes only ObjectId _ids.
// Its data lives in this process: a restart starts empty.
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [mode, modulesDir, portArg, timeoutArg] = process.argv.slice(2);
const port = Number(portArg);
if (!['serve', 'ping'].includes(mode) || !modulesDir || !(port > 0 && port < 65536)) {
    console.error('usage: congodb-server.mjs serve|ping MODULES_DIR PORT [TIMEOUT_S]');
    process.exit(2);
}
const nm = path.join(path.resolve(modulesDir), 'node_modules');

async function serve() {
    const congodb = path.join(nm, '@push.rocks/smartmongo/dist_ts/congodb/index.js');
    const { CongoServer } = await import(pathToFileURL(congodb).href);
    const server = new CongoServer({ port, host: '127.0.0.1', storage: 'memory' });
    await server.start();
    console.log(`ready ${port}`);
    const stop = async () => {
        try {
            await server.stop();
        } finally {
            process.exit(0);
        }
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
}

// One OP_MSG round trip: header (16 bytes, opCode 2013), flagBits 0, section kind 0 + document.
async function ping() {
    const bson = await import(pathToFileURL(path.join(nm, 'bson/lib/bson.node.mjs')).href);
    const body = bson.serialize({ ping: 1, $db: 'admin' });
    const msg = Buffer.alloc(16 + 4 + 1 + body.length);
    msg.writeInt32LE(msg.length, 0);
    msg.writeInt32LE(1, 4);
    msg.writeInt32LE(0, 8);
    msg.writeInt32LE(2013, 12);
    msg.writeUInt32LE(0, 16);
    msg.writeUInt8(0, 20);
    body.copy(msg, 21);
    const ms = Number(timeoutArg || 2) * 1000;
    const reply = await new Promise((resolve, reject) => {
        const sock = net.connect({ host: '127.0.0.1', port });
        let buf = Buffer.alloc(0);
        const timer = setTimeout(() => {
            sock.destroy();
            reject(new Error('timeout'));
        }, ms);
        sock.on('connect', () => sock.write(msg));
        sock.on('error', (e) => {
            clearTimeout(timer);
            reject(e);
        });
        sock.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            if (buf.length >= 4 && buf.length >= buf.readInt32LE(0)) {
                clearTimeout(timer);
                sock.destroy();
                resolve(buf);
            }
        });
    });
    const doc = bson.deserialize(reply.subarray(21));
    if (doc.ok !== 1) throw new Error(`ping answered ${JSON.stringify(doc)}`);
}

try {
    await (mode === 'serve' ? serve() : ping());
} catch (e) {
    console.error(`congodb-server ${mode}: ${e.message}`);
    process.exit(1);
}

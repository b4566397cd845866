// The image app's routes in Express (4 or 5, by the module name given), behind tokengate in the
// differential test. `X-Served: route=…;album=…` says which route and album the app served.
// Method overrides as the method-override README shows them: header, query and body, the body
// parsed as url-encoded, JSON or multipart (multer), whichever it is.
'use strict';
const [, , which, port] = process.argv;
const express = require(which);
const methodOverride = require('method-override');
const multer = require('multer');

const app = express();
app.use(express.urlencoded({ extended: true }));
app.use(express.json());
app.use(multer({ storage: multer.memoryStorage() }).any());
app.use(methodOverride('X-HTTP-Method-Override'));
app.use(methodOverride('_method'));
app.use(methodOverride((req) => {
  if (req.body && typeof req.body === 'object' && '_method' in req.body) {
    const method = req.body._method;
    delete req.body._method;
    return method;
  }
  return undefined;
}));

const served = (route) => (req, res) => {
  const album = req.params.album ?? '';
  res.set('X-Served', `route=${route};album=${encodeURIComponent(album)}`);
  res.type('text/plain').send(`${route} ${album}\n`);
};

app.get('/albums/:album', served('album'));
app.get('/albums/:album/images', served('list'));
app.post('/albums/:album/images', served('upload'));
app.put('/albums/:album/images', served('upload'));
app.delete('/albums/:album/images/:image', served('delete'));
app.put('/albums/:album/captions', served('caption'));
app.patch('/albums/:album/captions', served('caption'));
app.get('/albums/:album/fullscreen', served('fullscreen'));
app.post('/api/v1/token', served('legacy_token'));

app.listen(Number(port), '127.0.0.1');
